"""The statistics behind the claims on the equal-footing policy tables
(``dynroute.policies.table``): cells, Holm's judge, MAC savings and the split spread. The
claims themselves are in ``dynroute.experiments.claims.footing``; the report and the
documents' tables read the same cells from here.

Every claim names the family of cells it tests: one cell per (network, distinct pair
of operating points) at a budget that binds (it changes the choice of at least one side on
validation; format 3 tables say so, older ones count every budget), so saturated budgets
count once or not at all, and Holm's correction runs over the family. "Ahead" always
means significantly ahead after the correction (exact McNemar, family-wise 0.05); a claim
is supported when its side is ahead in half the cells or more and significantly behind in
none. Tables made before the equal-footing protocol (format 1) are listed, never counted.

The decomposition's steps (raw rule -> + recalibration -> + combination -> + learned
decisions) each get a claim; the learned decision is the learned policy (the paper's
routers, or the scheduler on any answers) that is most accurate on validation at the
budget, against the best baseline there. Seeds (``sweep --seed``) give each step's gain
its spread across validation splits drawn afresh.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynroute.experiments.results import Results
from dynroute.policies.statistics import (
    SIGNIFICANCE,
    holm,
    mcnemar_counts,
    mcnemar_p_value,
)
from dynroute.policies.table import correct_bits

STEPS = ("+ recalibration", "+ combination", "+ learned decisions")
#: The first table format on equal footing (2); format 3 (``TABLE_VERSION``) adds binding
#: budgets, the one-standard-error selection and MAC savings.
EQUAL_FOOTING_VERSION = 2
#: How far a validation-fitted policy's test MACs may exceed its budget.
BUDGET_TOLERANCE = 0.05


@dataclass
class Cell:
    """One paired comparison in a claim's family: which network and budget, the accuracy
    difference (first minus second, on test) and its exact McNemar p-value."""

    network: str
    budget: float
    difference: float
    p_value: float
    pair: str
    #: Both sides' test MACs (format 3 tables), first then second.
    macs: tuple[float, float] | None = None


@dataclass
class Verdict:
    """A family of cells after Holm's correction."""

    cells: list[Cell]
    ahead: int
    behind: int
    #: Per cell, whether the correction rejects "no difference" there.
    significant: list[bool] = field(default_factory=list)

    def budgets(self, ahead: bool = True) -> list[float]:
        """The budgets of the cells significantly ahead (or behind), in increasing order."""
        return sorted(
            c.budget
            for c, s in zip(self.cells, self.significant, strict=True)
            if s and (c.difference > 0) == ahead and c.difference != 0
        )

    @property
    def supported(self) -> bool:
        return bool(self.cells) and self.behind == 0 and 2 * self.ahead >= len(self.cells)

    def describe(self, first: str, second: str) -> str:
        differences = [c.difference for c in self.cells]
        networks = sorted({c.network for c in self.cells})
        macs = [c.macs for c in self.cells if c.macs is not None]
        spend = ""
        if macs:
            ratios = [a / b for a, b in macs if b > 0]
            spend = (
                f"; test MACs {min(a for a, _ in macs) / 1e6:.2f}–"
                f"{max(a for a, _ in macs) / 1e6:.2f} M against "
                f"{min(b for _, b in macs) / 1e6:.2f}–{max(b for _, b in macs) / 1e6:.2f} M "
                f"({min(ratios):.2f}× to {max(ratios):.2f}× of the second side's)"
            )
        return (
            f"{first} vs {second} over {len(self.cells)} distinct binding (network, budget) "
            f"cells of {len(networks)} network(s): significantly ahead at {self.ahead}, "
            f"behind at {self.behind} (exact McNemar, Holm-corrected at {SIGNIFICANCE}); "
            f"differences {100 * min(differences):+.2f} to {100 * max(differences):+.2f} "
            f"points (mean {100 * float(np.mean(differences)):+.2f}){spend}; needs ahead at "
            "half the cells or more and behind at none"
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
    return Verdict(family, ahead, behind, list(rejected))


def equal_footing_tables(results: Results) -> tuple[list[tuple[str, dict]], list[str]]:
    """(network label, table) of every result with an equal-footing table (format 2 or
    later), and the labels of results whose table predates the protocol (not counted)."""
    tables, old = [], []
    for experiment, networks in sorted(results.items()):
        for network, result in sorted(networks.items()):
            table = result.get("budgets")
            if not table or not table.get("budgets"):
                continue
            label = f"{experiment}/{network}"
            if table.get("version", 1) >= EQUAL_FOOTING_VERSION:
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


def binds(versus: dict[str, Any]) -> bool:
    """Whether a comparison's budget binds (changes either side's choice); tables before
    format 3 do not say, and count every budget."""
    return bool(versus.get("binding", True))


def step_cells(tables: list[tuple[str, dict]], step: str) -> list[Cell]:
    """Each table's comparisons of ``step`` with the step before it, at binding budgets."""
    cells = []
    for label, table in tables:
        for row in table["budgets"]:
            for entry in row.get("steps", []):
                versus = entry.get("versus_previous")
                if entry["step"] == step and versus is not None and binds(versus):
                    cells.append(_cell(label, row["budget"], versus))
    return cells


def learned_cells(tables: list[tuple[str, dict]]) -> list[Cell]:
    """The best learned decision (on validation) against the best baseline, per binding
    budget."""
    cells = []
    for label, table in tables:
        for row in table["budgets"]:
            key = best_learned(row)
            if key is not None and binds(versus := row["learned"][key]["versus_best_baseline"]):
                cells.append(_cell(label, row["budget"], versus))
    return cells


def _cell(label: str, budget: float, versus: dict[str, Any]) -> Cell:
    macs = versus.get("test_macs")
    return Cell(
        label,
        budget,
        versus["accuracy_difference"],
        versus["p_value"],
        versus["pair"],
        None if macs is None else (float(macs[0]), float(macs[1])),
    )


@dataclass
class Savings:
    """MAC savings of the best learned decision over the best baseline, one per distinct
    (network, families, accuracy) cell, and the median's bootstrap draws."""

    values: list[float]
    medians: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    def interval(self) -> tuple[float, float]:
        """The 95 % bootstrap interval of the median (percentiles of the draws' medians)."""
        low, high = np.percentile(self.medians, [2.5, 97.5])
        return float(low), float(high)


def mac_savings(tables: list[tuple[str, dict]]) -> Savings | None:
    """Per distinct cell (network, learned family, best baseline, accuracy to 4 decimals;
    format 3 tables, where both test envelopes still rise), the MACs the best learned
    decision saves; the median over cells in each bootstrap draw."""
    cells: dict[tuple[str, str, str, float], dict[str, Any]] = {}
    for label, table in tables:
        for row in table["budgets"]:
            key = best_learned(row)
            if key is None or "mac_saving" not in row["learned"][key]:
                continue
            saving = row["learned"][key]["mac_saving"]
            if saving["saving"] is None:
                continue
            cell = (label, key, row["best_baseline"], round(saving["accuracy"], 4))
            cells.setdefault(cell, saving)
    if not cells:
        return None
    values = [c["saving"] for c in cells.values()]
    draws = len(next(iter(cells.values()))["draws"])
    medians = []
    for k in range(draws):
        drawn = [c["draws"][k] for c in cells.values() if c["draws"][k] is not None]
        if drawn:
            medians.append(float(np.median(drawn)))
    return Savings(values, medians)


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
        if not (chosen.get("binding", True) or row["policies"][best].get("binding", True)):
            continue
        first = correct_bits(table, chosen)
        second = correct_bits(base, row["policies"][best])
        b, c = mcnemar_counts(first, second)
        difference = chosen["test"]["accuracy"] - row["policies"][best]["test"]["accuracy"]
        pair = f"{label}|{chosen['correct']}|{row['policies'][best]['correct']}"
        macs = (chosen["test"]["mean_macs"], row["policies"][best]["test"]["mean_macs"])
        cell = Cell(baseline, row["budget"], difference, mcnemar_p_value(b, c), pair, macs)
        out.append((cell, label))
    return out


@dataclass(frozen=True)
class SplitGain:
    """A step's gain on one validation split: the mean over its distinct binding budgets of
    the test-accuracy differences, and that mean's standard error (each difference's paired
    binomial variance; budgets treated as independent, though they share test images)."""

    mean: float
    standard_error: float


def split_spread(
    variants: dict[str, Results], networks: Iterable[str]
) -> dict[str, dict[str, list[SplitGain]]]:
    """Per network, per step: its gain over the step before on each validation split
    (``variants``: seed -> results)."""
    out: dict[str, dict[str, list[SplitGain]]] = {}
    for label in networks:
        experiment, network = label.split("/")
        for _seed, results in sorted(variants.items()):
            table = results.get(experiment, {}).get(network, {}).get("budgets")
            if not table or table.get("version", 1) < EQUAL_FOOTING_VERSION:
                continue
            gains: dict[str, dict[str, dict[str, Any]]] = {step: {} for step in STEPS}
            for row in table["budgets"]:
                for entry in row.get("steps", []):
                    versus = entry.get("versus_previous")
                    if versus is not None and binds(versus):
                        gains[entry["step"]].setdefault(versus["pair"], versus)
                key = best_learned(row)
                if key is not None and binds(row["learned"][key]["versus_best_baseline"]):
                    versus = row["learned"][key]["versus_best_baseline"]
                    gains.setdefault("learned vs best baseline", {}).setdefault(
                        versus["pair"], versus
                    )
            n = table["num_test"]
            for step, found in gains.items():
                if found:
                    out.setdefault(label, {}).setdefault(step, []).append(
                        _split_gain(list(found.values()), n)
                    )
    return out


def _split_gain(comparisons: list[dict[str, Any]], n: int) -> SplitGain:
    differences = [v["accuracy_difference"] for v in comparisons]
    variances = [
        max(0.0, (v["only_first"] + v["only_second"]) / n - v["accuracy_difference"] ** 2) / n
        for v in comparisons
    ]
    k = len(comparisons)
    return SplitGain(float(np.mean(differences)), float(np.sqrt(sum(variances))) / k)
