"""``routed_chain`` and ``static_truncation``: any stage list as a routed tree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.chains import PooledRouter, routed_chain, stage_channels, static_truncation
from dynroute.nn.macs import count_node_macs, flop_counter_macs, tree_costs
from dynroute.nn.prediction import predict_dense
from dynroute.policies.analysis import exits_for_k, router_inputs
from helpers.routing import scramble_routing

SHAPE = (3, 16, 16)


def stages() -> list[nn.Module]:
    """Three small conv stages: 8 channels at 16 px, 12 at 8 px, 16 at 4 px."""

    def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())

    return [conv(3, 8, 1), conv(8, 12, 2), conv(12, 16, 2)]


def images(n: int = 48, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen)


def test_chain_structure_and_costs() -> None:
    torch.manual_seed(0)
    tree = routed_chain(stages(), 5, input_shape=SHAPE, head_pool=2)
    names = [node.name for node in tree.nodes]
    assert names == ["stage1", "exit1", "stage2", "exit2", "stage3", "exit3"]
    assert [len(tree.children_of[j]) for j in tree.junctions] == [2, 2]
    assert stage_channels(stages(), SHAPE) == [8, 12, 16]
    macs = tree_costs(tree).node_macs
    assert count_node_macs(tree) == flop_counter_macs(tree) == list(macs)
    router = 8 * 4 * 16 + 16 * 16 + 16 * 2  # pooled 2x2 map: 32 features
    assert macs[0] == 16 * 16 * 9 * 3 * 8 + router
    assert macs[1] == 8 * 4 * 5  # exit1: the pooled map into 5 logits


def test_heads_read_only_the_pooled_map() -> None:
    torch.manual_seed(0)
    tree = routed_chain(stages(), 3, input_shape=SHAPE, dynamic_k_cpt=True).eval()
    out = tree.nodes[0].transform(images(4))
    router, exit_head = tree.nodes[0].router, tree.nodes[1].transform
    assert isinstance(router, PooledRouter) and router.k_cpt_input
    assert router.reads(out).shape == exit_head.reads(out).shape == (4, 8, 1, 1)
    k = torch.full((4, 1), 10.0)
    torch.testing.assert_close(router(router.reads(out), k), router(out, k))
    torch.testing.assert_close(exit_head(exit_head.reads(out)), exit_head(out))


@pytest.mark.parametrize("dynamic", [False, True])
def test_engine_matches_dense(dynamic: bool) -> None:
    torch.manual_seed(1)
    x = images()
    k = 2e-8 if dynamic else None
    tree = routed_chain(stages(), 4, input_shape=SHAPE, dynamic_k_cpt=dynamic, head_pool=2)
    tree = scramble_routing(tree, x, k)
    dense = predict_dense(tree, x, k)
    engine = EarlyExitEngine(tree)(x, k)
    assert torch.equal(engine.exits, dense.exits) and torch.equal(engine.macs, dense.macs)
    torch.testing.assert_close(engine.logits, dense.logits, rtol=1e-4, atol=1e-4)
    assert dense.exits.unique().numel() >= 2
    # Routers say what they read: routing from those features alone is the same routing.
    inputs = router_inputs(tree, x)
    assert inputs is not None and torch.equal(exits_for_k(tree, inputs, len(x), k), dense.exits)


def test_static_truncation() -> None:
    tree = static_truncation(stages(), 2, 3, input_shape=SHAPE)
    assert [node.name for node in tree.nodes] == ["stage1", "stage2", "exit"]
    assert not tree.junctions and tree.leaves == [2]
    assert tree_costs(tree).node_macs[2] == 12 * 3
    with pytest.raises(DynrouteError, match="depth must be between 1 and 3"):
        static_truncation(stages(), 4, 3, input_shape=SHAPE)


def test_stage_errors_name_the_stage() -> None:
    broken = [*stages()[:1], nn.Conv2d(5, 4, 3)]  # expects 5 channels, gets 8
    with pytest.raises(DynrouteError, match=r"stage 2 fails on inputs of shape \(8, 16, 16\)"):
        routed_chain(broken, 3, input_shape=SHAPE)
    with pytest.raises(DynrouteError, match="stage 2 must return"):
        routed_chain([*stages()[:1], nn.Flatten()], 3, input_shape=SHAPE)
    with pytest.raises(DynrouteError, match="at least one stage"):
        routed_chain([], 3)
    with pytest.raises(DynrouteError, match="head_pool must be a positive integer"):
        routed_chain(stages(), 3, input_shape=SHAPE, head_pool=0)


def test_meta_device_skeleton() -> None:
    """Checkpoint loading builds a skeleton on the meta device first."""
    with torch.device("meta"):
        tree = routed_chain(stages(), 3, input_shape=SHAPE)
    assert next(tree.parameters()).is_meta and len(tree.leaves) == 3
