"""Evaluation statistics against values worked out by hand on a five-node tree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.engine.evaluate import evaluate, every_exit_accuracy
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import Node, RoutedTree


def linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def constant_exit(label: int, name: str) -> Node:
    """Leaf whose Linear(2, 3) (6 MACs) always predicts ``label``."""
    bias = [0.0, 0.0, 0.0]
    bias[label] = 1.0
    return Node(linear([[0.0, 0.0]] * 3, bias), name=name)


@pytest.fixture
def hand_tree() -> RoutedTree:
    """root (x0 > 0 -> A, else B); B (x1 > 0 -> C, else D); A, C, D predict 0, 1, 2.

    Pre-order: root 0, A 1, B 2, C 3, D 4. Root and B cost 4 (identity) + 4 (router)
    MACs, every exit 6: paths cost A 14, C 22, D 22.
    """
    identity = [[1.0, 0.0], [0.0, 1.0]]
    b = Node(
        linear(identity),
        [constant_exit(1, "C"), constant_exit(2, "D")],
        router=linear([[0.0, 1.0], [0.0, -1.0]]),
        name="B",
    )
    root = Node(
        linear(identity),
        [constant_exit(0, "A"), b],
        router=linear([[1.0, 0.0], [-1.0, 0.0]]),
        name="root",
    )
    return RoutedTree(root, (2,), num_classes=3)


X = [(1, 0.5), (2, -1), (-1, 1), (-1, -1), (-2, 3), (-0.5, -2), (3, 3), (-1, 2)]
# exits:   A      A       C        D        C         D         A       C
LABELS = [0, 1, 1, 2, 0, 2, 0, 1]


@pytest.mark.parametrize("method", ["dense", "engine"])
def test_hand_computed_statistics(hand_tree: RoutedTree, method: str) -> None:
    assert tree_costs(hand_tree).node_macs == (8, 6, 8, 6, 6)
    hand_tree.train()
    result = evaluate(
        hand_tree, np.array(X, dtype=np.float32), np.array(LABELS), batch_size=3, method=method
    )
    assert hand_tree.training  # mode restored
    data = json.loads(json.dumps(result.to_dict()))
    assert data["num_examples"] == 8
    assert data["accuracy"] == pytest.approx(6 / 8)
    assert data["mean_macs"] == pytest.approx((3 * 14 + 5 * 22) / 8)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert [n["name"] for n in data["nodes"]] == ["root", "A", "B", "C", "D"]
    expected = {
        # name: reached, classified, accuracy, class counts, path MACs
        "root": (1.0, 0.0, None, [0, 0, 0], 8),
        "A": (3 / 8, 3 / 8, 2 / 3, [2, 1, 0], 14),
        "B": (5 / 8, 0.0, None, [0, 0, 0], 16),
        "C": (3 / 8, 3 / 8, 2 / 3, [1, 2, 0], 22),
        "D": (2 / 8, 2 / 8, 1.0, [0, 0, 2], 22),
    }
    for name, (reached, classified, accuracy, counts, path_macs) in expected.items():
        node = nodes[name]
        assert node["reached"] == pytest.approx(reached)
        assert node["classified"] == pytest.approx(classified)
        assert node["accuracy"] == (None if accuracy is None else pytest.approx(accuracy))
        assert node["class_counts"] == counts
        assert node["path_macs"] == path_macs
    assert nodes["B"]["parent"] == 0 and nodes["C"]["parent"] == 2
    assert [n["is_leaf"] for n in data["nodes"]] == [False, True, False, True, True]


def test_length_mismatch(hand_tree: RoutedTree) -> None:
    with pytest.raises(ValueError, match="labels"):
        evaluate(hand_tree, torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_every_exit_accuracy_ignores_routing(hand_tree: RoutedTree) -> None:
    # A, C and D always predict 0, 1 and 2; the labels hold 3, 3 and 2 of each class.
    every = every_exit_accuracy(hand_tree, torch.tensor(X), torch.tensor(LABELS), batch_size=3)
    assert list(every) == ["A", "C", "D"]
    assert every["A"] == {"accuracy": 3 / 8, "class_accuracy": [1.0, 0.0, 0.0]}
    assert every["C"] == {"accuracy": 3 / 8, "class_accuracy": [0.0, 1.0, 0.0]}
    assert every["D"] == {"accuracy": 2 / 8, "class_accuracy": [0.0, 0.0, 1.0]}


def test_policy_path_macs_by_hand(hand_tree: RoutedTree) -> None:
    costs = tree_costs(hand_tree)
    # learned: transforms and routers; thresholds: transforms, the exit heads evaluated at
    # each junction passed, and B's router (B has no non-exit sink to fall back on);
    # oracle: transforms and the exit taken.
    assert [costs.path_macs[i] for i in (1, 3, 4)] == [14, 22, 22]
    assert [costs.threshold_path_macs[i] for i in (1, 3, 4)] == [10, 30, 30]
    assert [costs.oracle_path_macs[i] for i in (1, 3, 4)] == [10, 14, 14]


@pytest.mark.parametrize("method", ["dense", "engine"])
def test_threshold_policies_by_hand(hand_tree: RoutedTree, method: str) -> None:
    """Every exit always answers with confidence e / (e + 2) = 0.576 (entropy 0.85)."""
    x, y = np.array(X, dtype=np.float32), np.array(LABELS)
    low = evaluate(hand_tree, x, y, method=method, policy=Policy("confidence", 0.5))
    assert low.accuracy == pytest.approx(3 / 8) and low.mean_macs == pytest.approx(10)
    assert low.policy == {"name": "confidence", "threshold": 0.5}
    # Nothing passes 0.6: every example goes on to B, whose exits both fail too, so B's
    # router chooses between them (x1 > 0: C, else D).
    high = evaluate(hand_tree, x, y, method=method, policy=Policy("confidence", 0.6))
    assert high.accuracy == pytest.approx(4 / 8) and high.mean_macs == pytest.approx(30)
    entropy = evaluate(hand_tree, x, y, method=method, policy=Policy("entropy", 0.9))
    assert entropy.mean_macs == pytest.approx(10)  # 0.85 <= 0.9: everyone leaves at A


def test_oracle_takes_the_cheapest_correct_exit(hand_tree: RoutedTree) -> None:
    result = evaluate(
        hand_tree, np.array(X, dtype=np.float32), np.array(LABELS), policy=Policy("oracle")
    )
    assert result.accuracy == 1.0
    assert result.mean_macs == pytest.approx((3 * 10 + 5 * 14) / 8)
    with pytest.raises(DynrouteError, match="not a way to run a network"):
        EarlyExitEngine(hand_tree.eval(), policy=Policy("oracle"))


@pytest.mark.parametrize(
    ("name", "threshold", "message"),
    [
        ("greedy", None, "`policy` must be one of learned"),
        ("confidence", None, "needs a `threshold`"),
        ("entropy", 1.5, r"needs a `threshold` in \[0, 1\]"),
        ("learned", 0.5, "takes no `threshold`"),
    ],
)
def test_policy_validation(name, threshold, message) -> None:
    with pytest.raises(DynrouteError, match=message):
        Policy(name, threshold)


@pytest.mark.parametrize("boost", [0.0, 0.6])
def test_a_dynamic_net_at_every_k_cpt_from_one_dense_pass(boost: float) -> None:
    """The trainer evaluates a dynamic-k_cpt net at its whole k_cpt set: the columns once,
    the routers per value, with exactly the statistics one pass per value gives."""
    from dynroute.nn.evaluation import routing_statistics, routing_statistics_by_k
    from helpers.routing import random_conv_tree, scramble_routing

    gen = torch.Generator().manual_seed(7)
    x = torch.rand(96, 3, 4, 4, generator=gen) * torch.rand(96, 1, 1, 1, generator=gen)
    y = torch.randint(0, 5, (96,), generator=gen)
    tree = scramble_routing(random_conv_tree(7, dynamic=True, boost=boost), x, 1e-8)
    k_values = [0.0, 1e-9, 8e-9, 6.4e-8]
    together = routing_statistics_by_k(tree, x, y, k_values, batch_size=40)
    apart = [routing_statistics(tree, x, y, batch_size=40, k_cpt=k) for k in k_values]
    assert [e.to_dict() for e in together] == [e.to_dict() for e in apart]
    assert len({e.mean_macs for e in apart}) > 1  # the routers read k_cpt: values differ
