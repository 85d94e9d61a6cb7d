"""Policy curves replayed from one dense pass equal what the policies decide when run."""

from __future__ import annotations

import math

import pytest
import torch

from dynroute.infer.curves import as_points, macs_for_accuracy
from dynroute.infer.operating_points import analyse, exit_table, oracle_curve
from dynroute.infer.paired import mcnemar, pack_bits, unpack_bits
from dynroute.nn.macs import tree_costs
from dynroute.nn.policy import Policy
from dynroute.nn.prediction import predict_dense
from routing_helpers import scramble_routing
from toy_trees import random_tree


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["confidence", "entropy"])
def test_replayed_threshold_exits_equal_the_dense_reference(seed, name):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=gen) * 3
    y = torch.randint(0, 3, (96,), generator=gen)
    tree = scramble_routing(random_tree(seed, max_depth=4), x).eval()
    table = exit_table(tree, x, y, batch_size=40)
    position = {leaf: k for k, leaf in enumerate(tree.leaves)}
    for threshold in (0.0, 0.2, 0.45, 0.7, 0.95, 1.0):
        policy = Policy(name, threshold)
        dense = predict_dense(tree, x, policy=policy)
        replayed = table.exits(policy)
        assert [position[int(e)] for e in dense.exits] == replayed.tolist()
        point = table.point(replayed, "threshold")
        assert point["mean_macs"] == pytest.approx(dense.macs.double().mean().item())
        assert point["accuracy"] == pytest.approx((dense.predictions == y).float().mean().item())


def test_oracle_curve_ends_at_the_oracle_and_is_cheapest():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(5)) * 3
    y = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(6))
    tree = scramble_routing(random_tree(1, max_depth=4), x).eval()
    table = exit_table(tree, x, y)
    oracle = predict_dense(tree, x, policy=Policy("oracle"), labels=y)
    curve = oracle_curve(table)
    top = max(curve, key=lambda p: p["accuracy"])
    assert top["accuracy"] == pytest.approx((oracle.predictions == y).float().mean().item())
    assert top["mean_macs"] == pytest.approx(oracle.macs.double().mean().item())
    # No threshold policy does better than the oracle at any accuracy it reaches.
    for name in ("confidence", "entropy"):
        for threshold in (0.3, 0.6, 0.9):
            point = table.point(table.exits(Policy(name, threshold)), "threshold")
            bound = macs_for_accuracy(as_points(curve), point["accuracy"])
            assert bound is None or bound <= point["mean_macs"] + 1e-9


def test_frontier_interpolates_and_refuses_the_unreachable():
    rows = [{"accuracy": 0.5, "mean_macs": 10.0}, {"accuracy": 0.9, "mean_macs": 30.0}]
    points = as_points([*rows, {"accuracy": 0.6, "mean_macs": 40.0}])  # below the frontier
    assert macs_for_accuracy(points, 0.7) == pytest.approx(20.0)
    assert macs_for_accuracy(points, 0.4) == pytest.approx(10.0)
    assert macs_for_accuracy(points, 0.95) is None


def test_mcnemar_exact():
    first = torch.tensor([True] * 10 + [False] * 2 + [True] * 50)
    second = torch.tensor([False] * 10 + [True] * 2 + [True] * 50)
    result = mcnemar(first, second)
    assert (result["only_first"], result["only_second"]) == (10, 2)
    expected = 2 * sum(math.comb(12, i) for i in range(3)) / 2**12
    assert result["p_value"] == pytest.approx(expected)
    assert result["accuracy_difference"] == pytest.approx(8 / 62)
    assert mcnemar(first, first)["p_value"] == 1.0


def test_analyse_reports_every_policy(tmp_path):
    x = torch.randn(120, 6, generator=torch.Generator().manual_seed(2)) * 3
    y = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(3))
    tree = scramble_routing(random_tree(2, max_depth=4), x).eval()
    result = analyse(tree, x, y)
    (learned,) = result["learned"]
    dense = predict_dense(tree, x)
    assert learned["accuracy"] == pytest.approx((dense.predictions == y).float().mean().item())
    assert learned["mean_macs"] == pytest.approx(dense.macs.double().mean().item())
    bits = unpack_bits(learned["correct_bits"], 120)
    assert torch.equal(bits, (dense.predictions == y).cpu())
    assert set(learned["against_thresholds"]) == {"confidence", "entropy"}
    assert len(result["confidence"]) > 20 and len(result["single_exit"]) == len(tree.leaves)
    costs = tree_costs(tree)
    for leaf, point in zip(tree.leaves, result["single_exit"], strict=True):
        assert point["mean_macs"] == costs.oracle_path_macs[leaf]
    assert pack_bits(bits) == learned["correct_bits"]


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_learned_exits_from_router_inputs_equal_dense_passes(dynamic):
    from dynroute.infer.operating_points import learned_exits
    from dynroute.nn.models import build_model

    torch.manual_seed(0)
    images = torch.rand(48, 3, 32, 32) * torch.rand(48, 1, 1, 1)
    k_values = [0.0, 4e-9, 6.4e-8] if dynamic else [None]
    k = torch.tensor(k_values * 16) if dynamic else None
    tree = scramble_routing(build_model("chain", dynamic_k_cpt=dynamic), images, k).eval()
    fast = learned_exits(tree, images, k_values, batch_size=20)
    for value, exits in zip(k_values, fast, strict=True):
        assert torch.equal(exits, predict_dense(tree, images, value).exits)
    assert len({tuple(e.tolist()) for e in fast}) == len(k_values)  # k_cpt changes routing
