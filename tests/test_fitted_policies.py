"""The fitted policies (budgeted, ensemble) and the validation-fitted policy table."""

from __future__ import annotations

import pytest
import torch

from dynroute.errors import DynrouteError
from dynroute.infer.budgets import budget_table, default_budgets
from dynroute.infer.fitted_policies import (
    budgeted_thresholds,
    fit_budgeted,
    fit_ensemble,
    threshold_family,
)
from dynroute.infer.operating_points import DenseOutputs, exit_table
from dynroute.nn.macs import tree_costs
from dynroute.nn.models import build_model
from dynroute.nn.policy import Policy

CLASSES = 4


@pytest.fixture(scope="module")
def chain():
    return build_model("chain", num_classes=CLASSES).eval()


def synthetic_outputs(n: int, seed: int, exits: int = 8) -> DenseOutputs:
    """Exit logits that grow more informative with depth; each exit has its own noise, so
    combining exits helps (as it does for real exits)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    shared = torch.randn(n, CLASSES, generator=gen)
    logits = []
    for k in range(exits):
        signal = 0.6 + 0.25 * k
        own = torch.randn(n, CLASSES, generator=gen)
        logits.append(signal * torch.nn.functional.one_hot(labels, CLASSES) + 0.5 * shared + own)
    return DenseOutputs(torch.stack(logits, 1), {}, labels)


def test_ensemble_beats_each_exit_alone_on_new_data(chain) -> None:
    fitted = fit_ensemble(chain, synthetic_outputs(4000, 0))
    fresh = synthetic_outputs(4000, 1)
    raw = exit_table(chain, outputs=fresh)
    combined = exit_table(chain, outputs=fresh, policy=fitted)
    raw_accuracy = raw.correct.float().mean(0)
    combined_accuracy = combined.correct.float().mean(0)
    assert combined_accuracy[0] == pytest.approx(float(raw_accuracy[0]), abs=0.02)  # alone
    assert (combined_accuracy[3:] > raw_accuracy[3:] + 0.02).all()  # deep exits gain
    assert len(fitted.weights[0]) == 1 and len(fitted.weights[-1]) == 8


def test_budgeted_shares_follow_the_geometric_distribution(chain) -> None:
    table = exit_table(chain, outputs=synthetic_outputs(5000, 2))
    for q in (0.5, 1.0, 2.0):
        exits = table.exits(budgeted_thresholds(table, q))
        shares = torch.bincount(exits, minlength=8).float() / len(exits)
        expected = q ** torch.arange(8, dtype=torch.float64)  # 8 exits, the last takes the rest
        expected /= expected.sum()
        assert torch.allclose(shares.double(), expected, atol=0.01)


def test_fit_budgeted_meets_the_budget_on_the_fitting_and_on_new_data(chain) -> None:
    fitting = exit_table(chain, outputs=synthetic_outputs(5000, 3))
    fresh = exit_table(chain, outputs=synthetic_outputs(5000, 4))
    macs = fitting.leaf_macs["threshold"].double()
    for budget in (3e6, 6e6, 12e6):
        policy = fit_budgeted(fitting, budget)
        spent = float(macs[fitting.exits(policy)].mean())
        assert 0.97 * budget <= spent <= budget
        assert float(macs[fresh.exits(policy)].mean()) == pytest.approx(budget, rel=0.05)
    with pytest.raises(DynrouteError, match="cannot stay within"):
        fit_budgeted(fitting, 1e6)  # below the first exit's cost


def test_threshold_family_spans_cheapest_to_dearest(chain) -> None:
    table = exit_table(chain, outputs=synthetic_outputs(2000, 5))
    family = threshold_family(table, Policy("confidence", 0.5))
    macs = [float(table.leaf_macs["threshold"][exits].double().mean()) for _, exits in family]
    assert macs[0] == pytest.approx(float(table.leaf_macs["threshold"][0]))  # threshold 0
    assert macs[-1] > 0.9 * float(table.leaf_macs["threshold"][-1])  # threshold 1


@pytest.mark.slow
def test_policy_table_is_fitted_on_validation_only(chain) -> None:
    """The fitted parameters do not change when the test split's labels do, and each
    policy spends what the budget allows on the validation split."""
    validation, test = synthetic_outputs(3000, 6), synthetic_outputs(3000, 7)
    budgets = [3e6, 15e6]
    first = budget_table(chain, validation, test, budgets)
    shuffled = DenseOutputs(test.logits, {}, test.labels[torch.randperm(3000)])
    second = budget_table(chain, validation, shuffled, budgets)
    for one, two in zip(first["budgets"], second["budgets"], strict=True):
        for name, entry in one["policies"].items():
            assert entry["parameters"] == two["policies"][name]["parameters"]
            assert entry["validation"] == two["policies"][name]["validation"]
            assert entry["validation"]["mean_macs"] <= one["budget"]
    row = first["budgets"][1]
    assert set(row["policies"]) == {"confidence", "entropy", "budgeted", "ensemble"}
    assert row["learned_vs_best_threshold"]["accuracy_difference"] > 0  # combining helps here
    assert 0 < row["gap_closed"]["share"] <= 1
    assert "validation" in first["protocol"] and "test" in first["protocol"]


def test_default_budgets_span_the_papers_band(chain) -> None:
    budgets = default_budgets(chain)
    assert budgets[0] == pytest.approx(2.06e6, rel=0.01)
    assert budgets[-1] == pytest.approx(15.0e6, rel=0.01)


def test_default_budgets_start_above_a_heavy_first_exit() -> None:
    tree = build_model("resnet18-exits", num_classes=CLASSES).eval()
    macs = tree_costs(tree).policy_path_macs("threshold")
    cheapest, deepest = (
        min(macs[leaf] for leaf in tree.leaves),
        max(macs[leaf] for leaf in tree.leaves),
    )
    assert cheapest > 0.1 * deepest  # the case: a first stage heavier than the lowest share
    budgets = default_budgets(tree)
    assert len(budgets) == 9 and budgets == sorted(budgets)
    assert budgets[0] == pytest.approx(1.05 * cheapest) and budgets[-1] == pytest.approx(
        0.73 * deepest
    )


def test_fitted_policies_survive_json() -> None:
    policy = Policy("ensemble", 0.8, weights=[[0.5, 1.0], [1.0]], biases=[[0.0, 0.1], [0.2, 0.0]])
    assert Policy.from_dict(policy.to_dict()) == policy
    budgeted = Policy("budgeted", thresholds=[0.9, 2.0])
    assert Policy.from_dict(budgeted.to_dict()) == budgeted
    with pytest.raises(DynrouteError, match="finite"):
        Policy("budgeted", thresholds=[float("nan")])
    with pytest.raises(DynrouteError, match="needs `weights`"):
        Policy("ensemble", 0.5)
    with pytest.raises(DynrouteError, match="unknown policy fields"):
        Policy.from_dict({"name": "confidence", "threshold": 0.5, "extra": 1})


@pytest.mark.slow
def test_policy_table_on_the_branching_tree() -> None:
    """Three-way junctions: the routers choose the branch, the policies when to leave."""
    from dynroute.nn.routing import history_exits

    tree = build_model("tree", num_classes=CLASSES).eval()
    depth = [len(passed) for passed in history_exits(tree).values()]

    def outputs(n: int, seed: int) -> DenseOutputs:
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, CLASSES, (n,), generator=gen)
        hot = torch.nn.functional.one_hot(labels, CLASSES)
        logits = torch.stack(
            [(0.6 + 0.3 * d) * hot + torch.randn(n, CLASSES, generator=gen) for d in depth], 1
        )
        scores = {
            j: torch.randn(n, len(tree.children_of[j]), generator=gen) for j in tree.junctions
        }
        return DenseOutputs(logits, scores, labels)

    table = budget_table(tree, outputs(1500, 8), outputs(1500, 9), [4e6, 12e6])
    for row in table["budgets"]:
        assert set(row["policies"]) == {"confidence", "entropy", "budgeted", "ensemble"}
        for entry in row["policies"].values():
            assert entry["validation"]["mean_macs"] <= row["budget"]
            assert entry["test"]["mean_macs"] == pytest.approx(row["budget"], rel=0.15)
