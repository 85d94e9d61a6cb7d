"""The policy table: every policy fitted on validation, chosen on validation, scored on
test, and compared on equal footing."""

from __future__ import annotations

import numpy as np
import pytest

from dynroute.nn.models import build_model
from dynroute.policies.exit_table import DenseOutputs
from dynroute.policies.table import (
    ANSWER_KINDS,
    Family,
    Member,
    _Draws,
    _mac_saving,
    budget_table,
    default_budgets,
    policy_families,
)
from helpers.outputs import chain_outputs, tree_outputs

CLASSES = 4
BUDGETS = [3e6, 8e6, 15e6]


@pytest.fixture(scope="module")
def chain():
    return build_model("chain", num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def table(chain):
    return budget_table(
        chain, chain_outputs(1500, 6), chain_outputs(1500, 7), BUDGETS, routers=False
    )


def _shuffled(outputs: DenseOutputs, seed: int) -> DenseOutputs:
    rng = np.random.default_rng(seed)
    return DenseOutputs(outputs.logits[rng.permutation(len(outputs))], {}, outputs.labels)


@pytest.mark.slow
def test_no_choice_reads_the_test_split(chain, table) -> None:
    """Another test split (its logits shuffled against its labels) changes test numbers
    only: every fitted parameter, validation number and choice stays."""
    other = budget_table(
        chain, chain_outputs(1500, 6), _shuffled(chain_outputs(1500, 7), 1), BUDGETS, routers=False
    )
    assert other["fitted"] == table["fitted"]
    for one, two in zip(table["budgets"], other["budgets"], strict=True):
        assert one["best_baseline"] == two["best_baseline"]
        assert [s["policy"] for s in one["steps"]] == [s["policy"] for s in two["steps"]]
        for name, entry in one["policies"].items():
            assert entry["parameters"] == two["policies"][name]["parameters"]
            assert entry["validation"] == two["policies"][name]["validation"]
        assert any(
            entry["test"] != two["policies"][name]["test"]
            for name, entry in one["policies"].items()
        )


@pytest.mark.slow
def test_every_policy_takes_its_cheapest_sufficient_member_within_the_budget(chain) -> None:
    """The one-standard-error rule: among the members within the budget (on validation),
    the cheapest within one standard error of the most accurate; a budget binds where that
    choice differs from the choice without a budget."""
    validation, test = chain_outputs(1000, 2), chain_outputs(1000, 3)
    families, _, _ = policy_families(chain, validation, test, routers=False)
    keys = {f.key for f in families}
    for kind in ANSWER_KINDS:
        assert {f"confidence/{kind}", f"entropy/{kind}", f"budgeted/{kind}"} <= keys
        assert f"scheduler/{kind}" in keys
    assert {"truncation/raw", "truncation/calibrated"} <= keys
    assert not any(key.startswith("learned") for key in keys)
    result = budget_table(chain, validation, test, [2.5e6, 6e6, 1e9], routers=False)
    binding = []
    for row in result["budgets"]:
        for family in families:
            within = [m for m in family.members if m.validation["mean_macs"] <= row["budget"]]
            best = max(m.validation["accuracy"] for m in within)
            floor = best - np.sqrt(best * (1 - best) / len(validation))
            cheapest = min(m.validation["mean_macs"] for m in within if m.accuracy >= floor)
            cell = row["policies"][family.key]
            assert cell["validation"]["mean_macs"] == cheapest
            assert cell["validation"]["accuracy"] >= floor
            binding.append(cell["binding"])
        baselines = [f.key for f in families if not f.learned]
        top = max(row["policies"][k]["validation"]["accuracy"] for k in baselines)
        assert row["policies"][row["best_baseline"]]["validation"]["accuracy"] == top
    last = result["budgets"][-1]
    assert not any(cell["binding"] for cell in last["policies"].values())  # no budget at all
    assert any(binding)  # and the tight one binds some
    for step in last["steps"][1:]:
        assert step["versus_previous"]["binding"] is False


@pytest.mark.slow
def test_the_steps_are_nested_and_each_is_tested_against_the_last(table) -> None:
    for row in table["budgets"]:
        steps = row["steps"]
        assert [s["step"] for s in steps] == [
            "raw rule", "+ recalibration", "+ combination", "+ learned decisions"
        ]  # fmt: skip
        assert steps[0]["policy"].endswith("/raw")
        accuracy = [row["policies"][s["policy"]]["validation"]["accuracy"] for s in steps]
        assert accuracy == sorted(accuracy)  # each step may only add on validation
        for step in steps[1:]:
            versus = step["versus_previous"]
            assert 0 <= versus["p_value"] <= 1 and "pair" in versus
        for key in {row["best_baseline"], *(s["policy"] for s in steps), *row["learned"]}:
            assert row["policies"][key]["correct"] in table["correct_bits"]


@pytest.mark.slow
def test_combination_and_recalibration_help_where_they_should(table) -> None:
    """The synthetic exits are overconfident and independently noisy: recalibrating and
    combining them must gain, and the table must say so."""
    row = table["budgets"][-1]
    by_step = {s["step"]: s for s in row["steps"]}
    assert by_step["+ combination"]["policy"].endswith("/combined")
    gain = sum(s["versus_previous"]["accuracy_difference"] for s in row["steps"][1:3])
    assert gain > 0.01


def _family(key: str, learned: bool, points: list[tuple[float, float]], n: int) -> Family:
    """A family whose members have the given (MACs, accuracy) on both splits."""
    rng = np.random.default_rng(len(points))
    members = []
    for macs, accuracy in points:
        correct = np.zeros(n, bool)
        correct[rng.permutation(n)[: round(accuracy * n)]] = True
        point = {"accuracy": float(correct.mean()), "mean_macs": macs}
        members.append(Member({}, point, point, correct))
    return Family(key, key.split("/")[0], "raw", learned, members)


def test_mac_savings_where_both_envelopes_still_rise() -> None:
    n = 2000
    rising = [(macs, 0.5 + 0.04 * macs / 1e6) for macs in np.linspace(1e6, 10e6, 19)]
    baseline = _family("confidence/raw", False, rising, n)
    same = _family("scheduler/raw", True, rising, n)
    draws = _Draws(n)
    for budget in (3e6, 6e6):
        saving = _mac_saving(budget, baseline, same, n, draws)
        assert saving["rising"] and saving["saving"] == pytest.approx(0.0, abs=1e-9)
        assert len(saving["draws"]) == 200
    halved = _family("scheduler/raw", True, [(m / 2, a) for m, a in rising], n)
    draws = _Draws(n)  # its draws are kept by family key: a new table
    saving = _mac_saving(6e6, baseline, halved, n, draws)
    assert saving["saving"] == pytest.approx(0.5, abs=0.02)
    measured = [d for d in saving["draws"] if d is not None]
    assert len(measured) > 150 and 0.3 < np.median(measured) < 0.7
    # At the top of the curve the envelope is flat: no saving is measured there.
    flat = rising + [(m, rising[-1][1]) for m in (11e6, 12e6)]
    top = _mac_saving(12e6, _family("confidence/raw", False, flat, n), halved, n, draws)
    assert top == {"rising": False, "saving": None}


def test_default_budgets_span_the_papers_band(chain) -> None:
    budgets = default_budgets(chain)
    assert budgets[0] == pytest.approx(2.06e6, rel=0.01)
    assert budgets[-1] == pytest.approx(15.0e6, rel=0.01)


def test_default_budgets_start_above_a_heavy_first_exit() -> None:
    from dynroute.nn.macs import tree_costs

    tree = build_model("resnet18-exits", num_classes=CLASSES).eval()
    macs = tree_costs(tree).threshold_path_macs
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


@pytest.mark.slow
def test_policy_table_on_the_branching_tree() -> None:
    """Three-way junctions: the routers choose the branch, the policies when to leave."""
    tree = build_model("tree", num_classes=CLASSES).eval()
    result = budget_table(
        tree, tree_outputs(tree, 1500, 8), tree_outputs(tree, 1500, 9), [4e6, 12e6]
    )
    routers = {f"learned/{kind}" for kind in ANSWER_KINDS}
    assert routers <= {f["key"] for f in result["families"]}  # on every kind of answers
    for row in result["budgets"]:
        for key in routers:
            assert key in row["learned"] or row["policies"].get(key) is None
        for entry in row["policies"].values():
            assert entry["validation"]["mean_macs"] <= row["budget"]
