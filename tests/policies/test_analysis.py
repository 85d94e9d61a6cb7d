"""A tree's operating points traced from one dense pass: the curves of ``dynroute policies``
and the sweep's analyses."""

from __future__ import annotations

import pytest
import torch

from dynroute.core.policy import Policy
from dynroute.nn.macs import tree_costs
from dynroute.nn.prediction import predict_dense
from dynroute.policies.analysis import analyse, learned_exits, oracle_curve
from dynroute.policies.curves import as_points, macs_for_accuracy
from dynroute.policies.exit_table import dense_outputs, exit_table
from dynroute.policies.statistics import pack_bits, unpack_bits
from helpers.routing import scramble_routing
from helpers.toy_trees import random_tree


def test_oracle_curve_ends_at_the_oracle_and_is_cheapest() -> None:
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(5)) * 3
    y = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(6))
    tree = scramble_routing(random_tree(1, max_depth=4), x).eval()
    table = exit_table(tree, dense_outputs(tree, x, y))
    oracle = predict_dense(tree, x, policy=Policy("oracle"), labels=y)
    curve = oracle_curve(table)
    top = max(curve, key=lambda p: p["accuracy"])
    assert top["accuracy"] == pytest.approx((oracle.predictions == y).float().mean().item())
    assert top["mean_macs"] == pytest.approx(oracle.macs.double().mean().item())
    # No threshold policy does better than the oracle at any accuracy it reaches.
    for name in ("confidence", "entropy"):
        for threshold in (0.3, 0.6, 0.9):
            policy = Policy(name, threshold)
            point = table.point(table.exits(policy), policy)
            bound = macs_for_accuracy(as_points(curve), point["accuracy"])
            assert bound is None or bound <= point["mean_macs"] + 1e-9


def test_analyse_reports_every_policy() -> None:
    x = torch.randn(120, 6, generator=torch.Generator().manual_seed(2)) * 3
    y = torch.randint(0, 3, (120,), generator=torch.Generator().manual_seed(3))
    tree = scramble_routing(random_tree(2, max_depth=4), x).eval()
    result = analyse(tree, x, y)
    (learned,) = result["learned"]
    dense = predict_dense(tree, x)
    assert learned["accuracy"] == pytest.approx((dense.predictions == y).float().mean().item())
    assert learned["mean_macs"] == pytest.approx(dense.macs.double().mean().item())
    bits = unpack_bits(learned["correct_bits"], 120)
    assert (bits == (dense.predictions == y).numpy()).all()
    assert set(learned["against_thresholds"]) == {"confidence", "entropy"}
    assert len(result["confidence"]) > 20 and len(result["single_exit"]) == len(tree.leaves)
    costs = tree_costs(tree)
    for leaf, point in zip(tree.leaves, result["single_exit"], strict=True):
        assert point["mean_macs"] == costs.oracle_path_macs[leaf]
    assert pack_bits(bits) == learned["correct_bits"]


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_learned_exits_from_router_inputs_equal_dense_passes(dynamic: bool) -> None:
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
