"""The policy table: every deployable policy at a set of budgets, fitted on held-out data.

The protocol (docs/policies.md): each policy's free parameters — a threshold, the
budgeted scheme's per-exit thresholds, the ensemble's weights and threshold — are fitted
on the run's validation split, which training never saw, to spend at most the budget
there (as much of it as they can); the test split only scores what was fitted. At every
budget the table pairs the ensemble with the best threshold policy on the test split
(exact McNemar) and measures, at that threshold policy's accuracy, the share of the gap to
the oracle's MACs that the ensemble closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynroute.errors import DynrouteError
from dynroute.infer.curves import as_points, macs_for_accuracy
from dynroute.infer.fitted_policies import (
    budgeted_family,
    fit_budgeted,
    fit_ensemble,
    threshold_family,
)
from dynroute.infer.operating_points import DenseOutputs, ExitTable, exit_table, oracle_curve
from dynroute.infer.paired import mcnemar, pack_bits
from dynroute.nn.macs import tree_costs
from dynroute.nn.policy import Policy
from dynroute.nn.tree import RoutedTree

#: Default budgets as shares of the deepest exit's path MACs: on the paper's chain
#: (20.6 M MACs) 2.1, 3.1, 4.1, 5.2, 6.2, 8.2, 10.3, 12.4 and 15.0 M, its 2-15 M band.
BUDGET_SHARES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.73)
#: The lowest default budget is at least this multiple of the cheapest exit's MACs.
CHEAPEST_MARGIN = 1.05
THRESHOLD_NAMES = ("confidence", "entropy", "budgeted")
LEARNED_NAME = "ensemble"
PROTOCOL = (
    "every policy's parameters fitted on the validation split to spend at most the budget "
    "there; accuracy and MACs measured on the test split"
)


def default_budgets(tree: RoutedTree) -> list[float]:
    """``BUDGET_SHARES`` of the deepest exit's path MACs under the threshold policies; where
    the cheapest exit costs more than the lowest share (a backbone whose first stage is
    heavy), the same spacing moved up to start just above that exit, so that every budget
    leaves the policies a choice."""
    macs = tree_costs(tree).policy_path_macs("threshold")
    deepest = max(macs[leaf] for leaf in tree.leaves)
    cheapest = min(macs[leaf] for leaf in tree.leaves)
    low, high = BUDGET_SHARES[0], BUDGET_SHARES[-1]
    start = max(low * deepest, CHEAPEST_MARGIN * cheapest)
    if start >= high * deepest:
        return [high * deepest]
    scale = (high * deepest - start) / ((high - low) * deepest)
    return [start + (share - low) * deepest * scale for share in BUDGET_SHARES]


def _within(
    family: Sequence[tuple[Policy, torch.Tensor]], table: ExitTable, cost_model: str, budget: float
) -> Policy | None:
    """The family's member spending most of ``budget`` on ``table`` (the more accurate of
    equal spenders); None if every member spends more."""
    macs = table.leaf_macs[cost_model].double()
    best, key = None, None
    for policy, exits in family:
        spent = float(macs[exits].mean())
        if spent <= budget:
            score = (spent, float(table.correctness(exits).float().mean()))
            if key is None or score > key:
                best, key = policy, score
    return best


def _score(table: ExitTable, policy: Policy) -> tuple[dict[str, float], torch.Tensor]:
    exits = table.exits(policy)
    return table.point(exits, policy.cost_model), table.correctness(exits)


def _curve(table: ExitTable, family: Sequence[tuple[Policy, torch.Tensor]], cost_model: str):
    """The family's (accuracy, mean MACs) points on ``table``, as a curve."""
    return as_points([table.point(exits, cost_model) for _, exits in family])


def budget_table(
    tree: RoutedTree,
    validation: DenseOutputs,
    test: DenseOutputs,
    budgets: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every deployable policy's fitted operating point at each budget, scored on test
    (JSON-ready; see the module's docstring). The best threshold policy a budget's ensemble
    is paired with is the one most accurate on test: the comparison's harder side."""
    if len(validation.labels) == 0:
        raise DynrouteError("the policy table needs a validation split to fit the policies on")
    if not tree.junctions:
        raise DynrouteError("a network without junctions has one operating point: no table")
    budgets = list(budgets or default_budgets(tree))
    raw = {
        "validation": exit_table(tree, outputs=validation),
        "test": exit_table(tree, outputs=test),
    }
    ensemble = fit_ensemble(tree, validation)
    combined = {
        split: exit_table(tree, outputs=outputs, policy=ensemble)
        for split, outputs in (("validation", validation), ("test", test))
    }
    families = {
        name: threshold_family(raw["validation"], Policy(name, 0.5))
        for name in ("confidence", "entropy")
    }
    # The ensemble's exit rule: one threshold, or the budgeted scheme on its combined
    # answers; at each budget the one more accurate on validation.
    ensemble_rules = [
        threshold_family(combined["validation"], ensemble),
        budgeted_family(combined["validation"], like=ensemble),
    ]
    tables = {name: raw for name in THRESHOLD_NAMES} | {LEARNED_NAME: combined}
    oracle = as_points(oracle_curve(raw["test"]))
    # The ensemble's test curve, both exit rules: what it reaches at each cost.
    rules_on_test = threshold_family(combined["test"], ensemble) + budgeted_family(
        combined["test"], like=ensemble
    )
    test_curves = {LEARNED_NAME: _curve(combined["test"], rules_on_test, "ensemble")}
    rows = []
    for budget in budgets:
        row: dict[str, Any] = {"budget": budget, "policies": {}}
        for name in (*THRESHOLD_NAMES, LEARNED_NAME):
            validation_table, test_table = tables[name]["validation"], tables[name]["test"]
            cost_model = "ensemble" if name == LEARNED_NAME else "threshold"
            if name == "budgeted":
                try:
                    chosen = fit_budgeted(validation_table, budget)
                except DynrouteError:
                    chosen = None
            elif name == LEARNED_NAME:
                rules = [
                    _within(rule, validation_table, cost_model, budget) for rule in ensemble_rules
                ]
                fitted_rules = [r for r in rules if r is not None]
                chosen = max(
                    fitted_rules,
                    key=lambda r: _score(validation_table, r)[0]["accuracy"],
                    default=None,
                )
            else:
                chosen = _within(families[name], validation_table, cost_model, budget)
            if chosen is None:
                continue
            fitted, _ = _score(validation_table, chosen)
            scored, correct = _score(test_table, chosen)
            row["policies"][name] = {
                "parameters": {
                    k: v
                    for k, v in chosen.to_dict().items()
                    if k not in ("name", "weights", "biases")
                },
                "validation": fitted,
                "test": scored,
                "correct_bits": pack_bits(correct),
                "_correct": correct,
            }
        thresholds = [n for n in THRESHOLD_NAMES if n in row["policies"]]
        if thresholds and LEARNED_NAME in row["policies"]:
            best = max(thresholds, key=lambda n: row["policies"][n]["test"]["accuracy"])
            learned = row["policies"][LEARNED_NAME]
            row["best_threshold"] = best
            row["learned_vs_best_threshold"] = mcnemar(
                learned["_correct"], row["policies"][best]["_correct"]
            )
            row["gap_closed"] = _gap_closed(row["policies"][best]["test"], test_curves, oracle)
        for entry in row["policies"].values():
            del entry["_correct"]
        rows.append(row)
        if progress is not None:
            progress(f"budget {budget / 1e6:.2f} M done")
    return {
        "protocol": PROTOCOL,
        "learned_policy": LEARNED_NAME,
        "threshold_policies": list(THRESHOLD_NAMES),
        "num_validation": len(validation.labels),
        "num_test": len(test.labels),
        "ensemble": {
            "weights": ensemble.to_dict()["weights"],
            "biases": ensemble.to_dict()["biases"],
        },
        "budgets": rows,
    }


def _gap_closed(threshold: dict[str, float], curves: dict[str, list], oracle: list) -> dict:
    """At the threshold policy's test accuracy: its MACs, the MACs the ensemble's and the
    oracle's test curves need for it, and the share of the threshold-oracle gap closed."""
    accuracy = threshold["accuracy"]
    learned = macs_for_accuracy(curves[LEARNED_NAME], accuracy)
    bound = macs_for_accuracy(oracle, accuracy)
    share = None
    if learned is not None and bound is not None and threshold["mean_macs"] - bound > 0:
        share = (threshold["mean_macs"] - learned) / (threshold["mean_macs"] - bound)
    return {
        "accuracy": accuracy,
        "threshold_macs": threshold["mean_macs"],
        "learned_macs": learned,
        "oracle_macs": bound,
        "share": share,
    }
