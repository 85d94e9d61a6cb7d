"""Policies replayed on an exit table decide exactly as they do when run: one exit rule
(``dynroute.core.decisions``) for the tables, the engine and the export runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynroute.core.policy import Policy
from dynroute.nn.prediction import predict_dense
from dynroute.policies.exit_table import dense_outputs, exit_table
from helpers.routing import fitted_policies, scramble_routing
from helpers.toy_trees import random_tree


def _check(tree, x, y, policy) -> None:
    table = exit_table(tree, dense_outputs(tree, x, y, batch_size=40), policy)
    dense = predict_dense(tree, x, policy=policy)
    where = tree.shape.leaf_position
    replayed = table.exits(policy)
    assert [where[int(e)] for e in dense.exits] == replayed.tolist()
    point = table.point(replayed, policy)
    assert point["mean_macs"] == pytest.approx(dense.macs.double().mean().item())
    assert point["accuracy"] == pytest.approx((dense.predictions == y).float().mean().item())


@pytest.mark.parametrize("seed", range(4))
def test_threshold_rules_replay_as_the_dense_reference_decides(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=gen) * 3
    y = torch.randint(0, 3, (96,), generator=gen)
    tree = scramble_routing(random_tree(seed, max_depth=4), x).eval()
    for name in ("confidence", "entropy"):
        for threshold in (0.0, 0.2, 0.45, 0.7, 0.95, 1.0):
            _check(tree, x, y, Policy(name, threshold))


@pytest.mark.parametrize("seed", range(3))
def test_fitted_answers_and_the_scheduler_replay_as_decided(seed: int) -> None:
    """Per-exit thresholds, calibrated and combined answers, and the scheduler, on n-way
    trees whose junctions offer several exits."""
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.randn(80, 6, generator=gen) * 3
    y = torch.randint(0, 3, (80,), generator=gen)
    tree = scramble_routing(random_tree(10 + seed, max_depth=4), x).eval()
    for policy in fitted_policies(tree, seed):
        _check(tree, x, y, policy)


def test_a_policy_on_other_answers_is_refused() -> None:
    x = torch.randn(20, 6)
    tree = scramble_routing(random_tree(1, max_depth=3), x).eval()
    table = exit_table(tree, dense_outputs(tree, x, torch.zeros(20, dtype=torch.long)))
    combined = fitted_policies(tree, 0)[1]
    with pytest.raises(ValueError, match="another table's answers"):
        table.exits(combined)
    assert np.all(table.exits(Policy("confidence", 0.0)) >= 0)


def _two_exit_tree(seed: int):
    """A junction offering two exits and an inner sink, whose junction offers only exits
    (the router then picks where an example ends if neither passes)."""
    from torch import nn

    from dynroute.nn.heads import Classifier, Router
    from dynroute.nn.tree import Node, RoutedTree

    torch.manual_seed(seed)

    def block() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 6), nn.ReLU())

    def exit_(name: str) -> Node:
        return Node(Classifier(6, 3), name=name)

    inner = Node(block(), [exit_("c"), exit_("d"), exit_("e")], Router(6, 3), name="inner")
    root = Node(block(), [exit_("a"), exit_("b"), inner], Router(6, 3), name="root")
    return RoutedTree(root, (6,), 3)


@pytest.mark.parametrize("seed", range(3))
def test_junctions_with_several_exits_replay_as_decided(seed: int) -> None:
    gen = torch.Generator().manual_seed(20 + seed)
    x = torch.randn(120, 6, generator=gen) * 3
    y = torch.randint(0, 3, (120,), generator=gen)
    tree = scramble_routing(_two_exit_tree(seed), x).eval()
    for policy in [Policy("confidence", 0.5), Policy("entropy", 0.8), *fitted_policies(tree, seed)]:
        _check(tree, x, y, policy)


@pytest.mark.parametrize("name", ["confidence", "entropy"])
def test_a_family_at_once_equals_each_threshold_replayed(name: str) -> None:
    from dynroute.nn.models import build_model
    from helpers.outputs import chain_outputs

    chain = build_model("chain", num_classes=4).eval()
    table = exit_table(chain, chain_outputs(500, 3))
    template = Policy(name, 0.5)
    thresholds = np.concatenate([np.linspace(0, 1, 57), table.measures(template)[:20, 2]])
    at_once = table.exits_for_thresholds(template, thresholds)
    for k, t in enumerate(thresholds):
        assert (at_once[:, k] == table.exits(Policy(name, float(t)))).all()
