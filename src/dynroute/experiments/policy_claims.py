"""What the policy tables support, on equal footing (``dynroute.policies.table``).

Every claim here names the family of cells it tests: one cell per (network, distinct pair
of operating points), so saturated budgets whose choices coincide count once, and Holm's
correction runs over the family. "Ahead" always means significantly ahead after the
correction (exact McNemar, family-wise 0.05); a claim is supported when its side is
ahead in half the cells or more and significantly behind in none. Tables made before the
equal-footing protocol (format 1) are listed, never counted.

The decomposition's steps (raw rule -> + recalibration -> + combination -> + learned
decisions) each get a claim; the learned decision is the learned policy (the paper's
routers, or the scheduler on any answers) that is most accurate on validation at the
budget, against the best baseline there. Seeds (``sweep --seed``) give each step's gain
its spread across validation splits drawn afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynroute.experiments.results import Results
from dynroute.policies.statistics import (
    SIGNIFICANCE,
    holm,
    mcnemar_counts,
    mcnemar_p_value,
)
from dynroute.policies.table import TABLE_VERSION, correct_bits

STEPS = ("+ recalibration", "+ combination", "+ learned decisions")
#: How far a validation-fitted policy's test MACs may exceed its budget.
BUDGET_TOLERANCE = 0.05
#: The share of the baseline-to-oracle gap the learned decision should close (issue goal).
GAP_GOAL = 0.25


@dataclass
class Cell:
    """One paired comparison in a claim's family: which network and budget, the accuracy
    difference (first minus second, on test) and its exact McNemar p-value."""

    network: str
    budget: float
    difference: float
    p_value: float
    pair: str


@dataclass
class Verdict:
    """A family of cells after Holm's correction."""

    cells: list[Cell]
    ahead: int
    behind: int

    @property
    def supported(self) -> bool:
        return bool(self.cells) and self.behind == 0 and 2 * self.ahead >= len(self.cells)

    def describe(self, first: str, second: str) -> str:
        differences = [c.difference for c in self.cells]
        networks = sorted({c.network for c in self.cells})
        return (
            f"{first} vs {second} over {len(self.cells)} distinct (network, budget) cells of "
            f"{len(networks)} network(s): significantly ahead at {self.ahead}, behind at "
            f"{self.behind} (exact McNemar, Holm-corrected at {SIGNIFICANCE}); differences "
            f"{100 * min(differences):+.2f} to {100 * max(differences):+.2f} points (mean "
            f"{100 * float(np.mean(differences)):+.2f}); needs ahead at half the cells or "
            "more and behind at none"
        )


def judge(cells: Iterable[Cell]) -> Verdict:
    """Identical comparisons counted once; Holm's correction over the rest."""
    distinct: dict[tuple[str, str], Cell] = {}
    for cell in cells:
        distinct.setdefault((cell.network, cell.pair), cell)
    family = list(distinct.values())
    rejected = holm([c.p_value for c in family])
    ahead = sum(r and c.difference > 0 for c, r in zip(family, rejected, strict=True))
    behind = sum(r and c.difference < 0 for c, r in zip(family, rejected, strict=True))
    return Verdict(family, ahead, behind)


def equal_footing_tables(results: Results) -> tuple[list[tuple[str, dict]], list[str]]:
    """(network label, table) of every result with an equal-footing table, and the labels
    of results whose table predates the protocol (not counted)."""
    tables, old = [], []
    for experiment, networks in sorted(results.items()):
        for network, result in sorted(networks.items()):
            table = result.get("budgets")
            if not table or not table.get("budgets"):
                continue
            label = f"{experiment}/{network}"
            if table.get("version", 1) >= TABLE_VERSION:
                tables.append((label, table))
            else:
                old.append(label)
    return tables, old


def best_learned(row: dict[str, Any]) -> str | None:
    """The learned policy most accurate on validation at this budget (None if none fits)."""
    learned = list(row.get("learned", {}))
    if not learned:
        return None
    return max(learned, key=lambda k: row["policies"][k]["validation"]["accuracy"])


def step_cells(tables: list[tuple[str, dict]], step: str) -> list[Cell]:
    """Each table's comparisons of ``step`` with the step before it."""
    cells = []
    for label, table in tables:
        for row in table["budgets"]:
            for entry in row.get("steps", []):
                versus = entry.get("versus_previous")
                if entry["step"] == step and versus is not None:
                    cells.append(_cell(label, row["budget"], versus))
    return cells


def learned_cells(tables: list[tuple[str, dict]]) -> list[Cell]:
    """The best learned decision (on validation) against the best baseline, per budget."""
    cells = []
    for label, table in tables:
        for row in table["budgets"]:
            key = best_learned(row)
            if key is not None:
                cells.append(
                    _cell(label, row["budget"], row["learned"][key]["versus_best_baseline"])
                )
    return cells


def _cell(label: str, budget: float, versus: dict[str, Any]) -> Cell:
    return Cell(label, budget, versus["accuracy_difference"], versus["p_value"], versus["pair"])


def gap_shares(tables: list[tuple[str, dict]]) -> list[float]:
    """The share of the baseline-oracle gap the best learned decision closes, per distinct
    cell (like for like: test envelopes of both families and of the oracle)."""
    shares: dict[tuple[str, str], float] = {}
    for label, table in tables:
        for row in table["budgets"]:
            key = best_learned(row)
            if key is None:
                continue
            entry = row["learned"][key]
            share = entry["gap_closed"]["share"]
            if share is not None:
                shares.setdefault((label, entry["versus_best_baseline"]["pair"]), share)
    return list(shares.values())


def budget_cells(tables: list[tuple[str, dict]]) -> list[tuple[float, str, str, float]]:
    """(test MACs / budget - 1, network, policy, budget) of every policy at every budget."""
    return [
        (cell["test"]["mean_macs"] / row["budget"] - 1, label, name, row["budget"])
        for label, table in tables
        for row in table["budgets"]
        for name, cell in row["policies"].items()
    ]


def recipe_cells(tables: list[tuple[str, dict]], baseline: str) -> list[tuple[Cell, str]]:
    """Per budget of the ``baseline`` network's table: the most accurate (on validation)
    last-step choice of any network, against the baseline network's best baseline, paired
    on the shared test split."""
    by_label = dict(tables)
    base = by_label.get(baseline)
    if base is None:
        return []
    out = []
    for row in base["budgets"]:
        best = row.get("best_baseline")
        if best is None:
            continue
        options = []
        for label, table in tables:
            for other in table["budgets"]:
                if abs(other["budget"] - row["budget"]) > 1e-6 * row["budget"] or not other.get(
                    "steps"
                ):
                    continue
                last = other["steps"][-1]["policy"]
                options.append((other["policies"][last], label, table))
        if not options:
            continue
        chosen, label, table = max(options, key=lambda o: o[0]["validation"]["accuracy"])
        first = correct_bits(table, chosen)
        second = correct_bits(base, row["policies"][best])
        b, c = mcnemar_counts(first, second)
        difference = chosen["test"]["accuracy"] - row["policies"][best]["test"]["accuracy"]
        pair = f"{label}|{chosen['correct']}|{row['policies'][best]['correct']}"
        out.append((Cell(baseline, row["budget"], difference, mcnemar_p_value(b, c), pair), label))
    return out


def split_spread(
    variants: dict[str, Results], networks: Iterable[str]
) -> dict[str, dict[str, list[float]]]:
    """Per network, per step: its gain (test accuracy over the step before, mean over the
    distinct budgets) on each validation split (``variants``: seed -> results)."""
    out: dict[str, dict[str, list[float]]] = {}
    for label in networks:
        experiment, network = label.split("/")
        for _seed, results in sorted(variants.items()):
            table = results.get(experiment, {}).get(network, {}).get("budgets")
            if not table or table.get("version", 1) < TABLE_VERSION:
                continue
            gains: dict[str, dict[str, float]] = {step: {} for step in STEPS}
            for row in table["budgets"]:
                for entry in row.get("steps", []):
                    versus = entry.get("versus_previous")
                    if versus is not None:
                        gains[entry["step"]].setdefault(
                            versus["pair"], versus["accuracy_difference"]
                        )
                key = best_learned(row)
                if key is not None:
                    versus = row["learned"][key]["versus_best_baseline"]
                    gains.setdefault("learned vs best baseline", {}).setdefault(
                        versus["pair"], versus["accuracy_difference"]
                    )
            for step, values in gains.items():
                if values:
                    out.setdefault(label, {}).setdefault(step, []).append(
                        float(np.mean(list(values.values())))
                    )
    return out
