"""What the exit-training recipes buy, on equal footing (``dynroute.train.recipes``).

Each recipe's network is held against plain multi-exit training of the same network, budget
by budget, through its *frontier*: at each budget of both policy tables, each network's best
policy there (the table's last step: every family, chosen on validation), scored on test and
paired per example (exact McNemar). Only budgets that bind either side count, identical
comparisons count once, and Holm's correction runs over each (recipe, dataset) family. A
recipe is ahead where it is significantly ahead after the correction; "best" is the recipe
with the most cells ahead less those behind, ties broken by the mean difference.

Beside the frontier: what recalibration still adds on top of each network (its table's
"+ recalibration" step, mean over distinct binding cells: a recipe that only does what
recalibration did leaves less to add), and each network's training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynroute.experiments.claims.common import (
    DATASETS,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)
from dynroute.experiments.policy_claims import Cell, Verdict, binds, judge
from dynroute.experiments.results import Results
from dynroute.policies.statistics import mcnemar_counts, mcnemar_p_value
from dynroute.policies.table import correct_bits


def _table(results: Results, experiment: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The one network of a multi-exit experiment: its result and its policy table."""
    networks = results.get(experiment, {})
    result = networks.get("multi-exit")
    if result is None or not result.get("budgets", {}).get("budgets"):
        return None
    return result, result["budgets"]


def frontier_cells(label: str, first: dict[str, Any], second: dict[str, Any]) -> list[Cell]:
    """At every budget both tables share: the first network's frontier against the
    second's (their last steps), paired on the shared test split, where the budget binds.
    Budgets are shares of each network's deepest path, so they match within
    ``BUDGET_MATCH`` (a boosted net's exits cost a few MACs more)."""
    cells = []
    for row in first["budgets"]:
        other = _same_budget(row["budget"], second["budgets"])
        if other is None or not row.get("steps") or not other.get("steps"):
            continue
        mine = row["policies"][row["steps"][-1]["policy"]]
        theirs = other["policies"][other["steps"][-1]["policy"]]
        if not (binds(mine) or binds(theirs)):
            continue
        b, c = mcnemar_counts(correct_bits(first, mine), correct_bits(second, theirs))
        difference = mine["test"]["accuracy"] - theirs["test"]["accuracy"]
        macs = (mine["test"]["mean_macs"], theirs["test"]["mean_macs"])
        pair = f"{mine['correct']}|{theirs['correct']}"
        cells.append(Cell(label, row["budget"], difference, mcnemar_p_value(b, c), pair, macs))
    return cells


#: Two tables' budgets are the same budget when they differ by at most this share.
BUDGET_MATCH = 1e-3


def _same_budget(budget: float, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    near = [r for r in rows if abs(r["budget"] - budget) <= BUDGET_MATCH * budget]
    return min(near, key=lambda r: abs(r["budget"] - budget)) if near else None


def recalibration_gain(table: dict[str, Any]) -> float | None:
    """The mean gain of the "+ recalibration" step over the distinct binding cells."""
    gains: dict[str, float] = {}
    for row in table["budgets"]:
        for step in row.get("steps", []):
            versus = step.get("versus_previous")
            if step["step"] == "+ recalibration" and versus is not None and binds(versus):
                gains.setdefault(versus["pair"], versus["accuracy_difference"])
    return float(np.mean(list(gains.values()))) if gains else None


@dataclass
class RecipeRow:
    """One recipe on one dataset against plain multi-exit training."""

    recipe: str
    dataset: str
    verdict: Verdict
    recalibration: float | None
    plain_recalibration: float | None
    train_seconds: float
    plain_train_seconds: float

    @property
    def mean_difference(self) -> float:
        return float(np.mean([c.difference for c in self.verdict.cells]))


def recipe_rows(results: Results) -> list[RecipeRow]:
    """Every recipe trained beside plain multi-exit training on a dataset."""
    from dynroute.experiments.registry import RECIPES

    rows = []
    for dataset in DATASETS:
        plain = _table(results, f"{dataset}-multi-exit")
        if plain is None:
            continue
        for recipe in RECIPES:
            found = _table(results, f"{dataset}-multi-exit-{recipe}")
            if found is None:
                continue
            cells = frontier_cells(f"{dataset}-multi-exit-{recipe}", found[1], plain[1])
            if not cells:
                continue
            rows.append(
                RecipeRow(
                    recipe,
                    dataset,
                    judge(cells),
                    recalibration_gain(found[1]),
                    recalibration_gain(plain[1]),
                    float(found[0]["train_seconds"]),
                    float(plain[0]["train_seconds"]),
                )
            )
    return rows


def best_recipe(rows: list[RecipeRow], dataset: str) -> RecipeRow | None:
    """The recipe with the most cells significantly ahead less those behind on ``dataset``
    (then the largest mean difference)."""
    mine = [r for r in rows if r.dataset == dataset]
    if not mine:
        return None
    return max(mine, key=lambda r: (r.verdict.ahead - r.verdict.behind, r.mean_difference))


def _points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


@register_claim
def recipe_beats_plain_training(context: Context) -> list[Claim]:
    """Each recipe against plain multi-exit training of the same chain, at the budgets
    that bind, one claim per (recipe, dataset) trained."""
    return [
        Claim(
            f"exit-training recipe '{row.recipe}' beats plain multi-exit training of "
            f"the same chain, frontier against frontier ({DATASETS[row.dataset]})",
            SUPPORTED if row.verdict.supported else NOT_SUPPORTED,
            row.verdict.describe(row.recipe, "plain multi-exit")
            + f"; recalibration adds {_points(row.recalibration)} points on top of it (plain: "
            f"{_points(row.plain_recalibration)}); trained in {row.train_seconds:.0f} s (plain: "
            f"{row.plain_train_seconds:.0f} s)",
        )
        for row in context.once(recipe_rows)
    ]


@register_claim
def best_recipe_ahead(context: Context) -> Claim | None:
    """The goal for the best recipe, on both datasets (where any recipe was trained)."""
    rows = context.once(recipe_rows)
    if not rows:
        return None
    parts, ok = [], True
    for dataset, title in DATASETS.items():
        best = best_recipe(rows, dataset)
        if best is None:
            ok = False
            parts.append(f"{title}: no recipe measured")
            continue
        ok &= best.verdict.supported
        parts.append(
            f"{title}: '{best.recipe}', ahead at {best.verdict.ahead} and behind at "
            f"{best.verdict.behind} of {len(best.verdict.cells)} binding cells"
        )
    return Claim(
        "the best exit-training recipe is significantly ahead of plain multi-exit "
        "training at half the binding budgets or more, and behind at none, on "
        "hybrid and on CIFAR-10",
        SUPPORTED if ok else NOT_SUPPORTED,
        "; ".join(parts),
    )


#: Validation splits (``sweep --seed``) the best recipe's gain is measured on.
SPLITS_NEEDED = 3


def split_gains(context: Context, dataset: str, recipe: str) -> list[float]:
    """The recipe's mean frontier difference against plain multi-exit training on each
    validation split where both were trained (the registry's own split first), over that
    split's distinct binding cells."""
    gains = []
    for _seed, results in sorted({"0": context.results, **context.variants}.items()):
        plain = _table(results, f"{dataset}-multi-exit")
        found = _table(results, f"{dataset}-multi-exit-{recipe}")
        if plain is None or found is None:
            continue
        cells = frontier_cells(f"{dataset}-multi-exit-{recipe}", found[1], plain[1])
        distinct = {c.pair: c.difference for c in cells}
        if distinct:
            gains.append(float(np.mean(list(distinct.values()))))
    return gains


@register_claim
def best_recipe_across_splits(context: Context) -> Claim | None:
    """The spread goal: the best recipe (on the registry's own split) gains on every one
    of at least ``SPLITS_NEEDED`` validation splits, on both datasets. Not supported as
    soon as one dataset has its splits and a gain that is not positive."""
    rows = context.once(recipe_rows)
    if not rows:
        return None
    claim = (
        f"the best exit-training recipe gains over plain multi-exit training on each of "
        f"at least {SPLITS_NEEDED} validation splits (`sweep --seed`), on hybrid and on "
        "CIFAR-10 (per split: the mean frontier difference over its distinct binding cells)"
    )
    parts, missing, failed = [], False, False
    for dataset, title in DATASETS.items():
        best = best_recipe(rows, dataset)
        gains = [] if best is None else split_gains(context, dataset, best.recipe)
        if best is None or len(gains) < SPLITS_NEEDED:
            missing = True
            recipe = "no recipe" if best is None else f"'{best.recipe}'"
            parts.append(
                f"{title}: {recipe} on {len(gains)} of {SPLITS_NEEDED} splits "
                f"(`dynroute sweep {dataset}-multi-exit"
                f"{'' if best is None else '-' + best.recipe} --seed N`)"
            )
            continue
        shown = ", ".join(f"{100 * g:+.2f}" for g in gains)
        spread = 100 * float(np.std(gains, ddof=1))
        parts.append(
            f"{title}: '{best.recipe}' {shown} points on {len(gains)} splits "
            f"(mean {100 * float(np.mean(gains)):+.2f} ± {spread:.2f} SD)"
        )
        failed |= min(gains) <= 0
    # One dataset measured on enough splits and failing settles it; otherwise it waits.
    verdict = NOT_SUPPORTED if failed else NOT_RUN if missing else SUPPORTED
    return Claim(claim, verdict, "; ".join(parts))
