"""The recipe claims: each recipe against plain multi-exit training, and the best one."""

from __future__ import annotations

import numpy as np

from dynroute.experiments.claims import NOT_RUN, NOT_SUPPORTED, SUPPORTED, Context, recipes
from dynroute.experiments.policy_claims import Cell, judge


def _row(recipe: str, dataset: str, p_values: list[float]) -> recipes.RecipeRow:
    cells = [
        Cell(f"{dataset}-{recipe}", 1e6 * (i + 1), 0.02, p, f"{i}") for i, p in enumerate(p_values)
    ]
    return recipes.RecipeRow(recipe, dataset, judge(cells), 0.01, None, 60.0, 50.0)


def test_each_recipe_and_the_best_one_on_both_datasets(monkeypatch) -> None:
    rows = [_row("distill", "hybrid", [1e-4, 1e-4]), _row("boost", "hybrid", [0.5, 1e-4])]
    monkeypatch.setattr(recipes, "recipe_rows", lambda _: rows)
    context = Context({})
    distill, boost = recipes.recipe_beats_plain_training(context)
    assert distill.verdict == SUPPORTED and "'distill'" in distill.claim
    assert "recalibration adds +1.00 points on top of it (plain: –)" in distill.evidence
    assert "trained in 60 s (plain: 50 s)" in distill.evidence
    assert boost.verdict == SUPPORTED  # ahead at 1 of 2 cells, behind at none
    best = recipes.best_recipe_ahead(context)
    assert "hybrid: 'distill', ahead at 2 and behind at 0 of 2" in best.evidence
    assert best.verdict == NOT_SUPPORTED and "CIFAR-10: no recipe measured" in best.evidence


def test_a_verdict_names_the_budgets_where_it_is_ahead_and_behind() -> None:
    """After Holm's correction: the 2 M cell (p 0.3) is significant neither way."""
    cells = [
        Cell("n", 3e6, -0.01, 1e-6, "a"),
        Cell("n", 1e6, 0.02, 1e-5, "b"),
        Cell("n", 2e6, 0.02, 0.3, "c"),
        Cell("n", 4e6, 0.01, 1e-4, "d"),
    ]
    verdict = judge(cells)
    assert verdict.budgets() == [1e6, 4e6] and verdict.budgets(ahead=False) == [3e6]
    assert (verdict.ahead, verdict.behind) == (2, 1)


def test_without_a_recipe_there_is_no_recipe_claim() -> None:
    assert recipes.recipe_beats_plain_training(Context({})) == []
    assert recipes.best_recipe_ahead(Context({})) is None


def table(budgets: list[float], right: list[bool]) -> dict:
    """A policy table whose frontier answers ``right`` at every budget."""
    from dynroute.policies.statistics import pack_bits

    bits = pack_bits(np.asarray(right))
    cell = {"test": {"accuracy": float(np.mean(right)), "mean_macs": 1.0}, "correct": "c"}
    rows = [{"budget": b, "steps": [{"policy": "p"}], "policies": {"p": cell}} for b in budgets]
    return {"budgets": rows, "correct_bits": {"c": bits}, "num_test": len(right)}


def test_a_boosted_nets_budgets_pair_with_the_plain_nets() -> None:
    """Budgets are shares of each net's deepest path: a boosted net's are a few MACs
    higher, and still pair with the plain net's at the same share (not one MAC further)."""
    plain = table([2060774.4, 3091161.6], [True, False, True, False])
    boosted = table([2060781.4, 3091172.1, 9e6], [True, True, True, False])
    cells = recipes.frontier_cells("boost", boosted, plain)
    assert [round(c.budget) for c in cells] == [2060781, 3091172]
    assert all(abs(c.difference - 0.25) < 1e-9 for c in cells)


def test_the_best_recipes_spread_over_validation_splits(monkeypatch) -> None:
    """The best recipe (on the registry's split) against plain training on each split:
    not run below three splits, supported only where every split's mean gain is positive,
    and not supported once one dataset has three splits and a gain that is not."""
    rows = [_row("distill", "hybrid", [1e-4]), _row("distill", "cifar10", [1e-4])]
    monkeypatch.setattr(recipes, "recipe_rows", lambda _: rows)

    def split(gain: int) -> dict:
        """Plain training right on 2 of 4 test examples, the recipe on 2 + ``gain``."""
        recipe = [True] * (2 + gain) + [False] * (2 - gain)
        return {
            f"{d}-multi-exit{r}": {"multi-exit": {"budgets": table([1e6], right)}}
            for d in ("hybrid", "cifar10")
            for r, right in (("", [True, True, False, False]), ("-distill", recipe))
        }

    context = Context({})
    context.results, context.variants = split(1), {"1": split(2)}
    assert recipes.split_gains(context, "hybrid", "distill") == [0.25, 0.5]
    claim = recipes.best_recipe_across_splits(context)
    assert claim.verdict == NOT_RUN and "hybrid: 'distill' on 2 of 3 splits" in claim.evidence
    context.variants["2"] = split(1)
    claim = recipes.best_recipe_across_splits(context)
    assert claim.verdict == SUPPORTED
    assert "'distill' +25.00, +50.00, +25.00 points on 3 splits (mean +33.33" in claim.evidence
    context.variants["2"] = split(0)  # level on one split: no gain there
    assert recipes.best_recipe_across_splits(context).verdict == NOT_SUPPORTED
    # One dataset failing on its three splits settles it, the other still short of them.
    for results in (context.results, *context.variants.values()):
        del results["hybrid-multi-exit-distill"]
    del context.variants["1"]["cifar10-multi-exit-distill"]
    context.variants["3"] = split(0)
    claim = recipes.best_recipe_across_splits(context)
    assert claim.verdict == NOT_SUPPORTED and "hybrid: 'distill' on 1 of 3" in claim.evidence
