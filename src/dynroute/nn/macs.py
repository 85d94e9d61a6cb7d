"""Multiply-accumulate accounting: the one place that says what a node and a path cost.

A convolution costs H_out * W_out * k_h * k_w * C_in / groups * C_out, a linear layer
n_in * n_out; batch norm, ReLU, pooling and resizing cost 0 (docs/method.md §3). Counts
come from the shapes seen in one traced forward pass, so any ``nn.Module`` built from
convolutions and linear layers is counted exactly. ``tree_costs`` counts a tree once and
keeps the table: each node's own MACs (transform and router), its root path and the
cumulative MACs of that path, which training, evaluation and the engine all read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynroute.core.decisions import base_path_macs, path_macs
from dynroute.core.policy import Policy
from dynroute.nn.tree import RoutedTree, evaluation_mode


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv/linear call per example, from its output shape."""
    per_example_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        c_in = module.in_channels // module.groups
        return per_example_outputs * c_in * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return per_example_outputs * module.in_features
    return 0


Measure = Callable[[int, Any, Any], tuple[int, Any]]


def _trace(tree: RoutedTree, measure: Measure) -> list[int]:
    """Run every node once on a single example and measure each node's work."""
    device = next(tree.parameters()).device
    x = torch.zeros((1, *tree.input_shape), device=device)
    k_feature = tree.router_k_cpt(0.0, 1, x)
    counts = [0] * len(tree.nodes)

    def visit(index: int, signal: Any) -> list[tuple[int, Any]]:
        counts[index], out = measure(index, signal, k_feature)
        return [(child, out) for child in tree.children_of[index]]

    with evaluation_mode(tree), torch.no_grad():
        tree.walk(x, visit)
    return counts


def count_macs(tree: RoutedTree) -> tuple[list[int], list[int]]:
    """Analytic MACs of every node's transform and of its router, per example."""
    transform_macs = [0] * len(tree.nodes)

    def measure(index: int, signal: Any, k_feature: Any) -> tuple[int, Any]:
        totals = {"transform": 0, "router": 0}
        handles = []
        node = tree.nodes[index]
        for part, own in (("transform", node.transform), ("router", node.router)):
            for m in own.modules() if own is not None else ():
                if isinstance(m, (nn.Conv2d, nn.Linear)):

                    def hook(module: nn.Module, _inputs: Any, out: Any, part: str = part) -> None:
                        totals[part] += layer_macs(module, out)

                    handles.append(m.register_forward_hook(hook))
        try:
            out, _ = tree.run_node(index, signal, k_feature)
        finally:
            for h in handles:
                h.remove()
        transform_macs[index] = totals["transform"]
        return totals["router"], out

    router_macs = _trace(tree, measure)
    return transform_macs, router_macs


def count_node_macs(tree: RoutedTree) -> list[int]:
    """Analytic MACs of every node (its transform and router), per example."""
    transform, router = count_macs(tree)
    return [t + r for t, r in zip(transform, router, strict=True)]


def flop_counter_macs(tree: RoutedTree) -> list[int]:
    """Per-node MACs according to ``torch.utils.flop_counter`` (FLOPs / 2).

    An independent count that cross-checks ``count_node_macs`` (tests, and any user
    checking their own module types).
    """

    def measure(index: int, signal: Any, k_feature: Any) -> tuple[int, Any]:
        counter = FlopCounterMode(display=False)
        with counter:
            out, _ = tree.run_node(index, signal, k_feature)
        return counter.get_total_flops() // 2, out

    return _trace(tree, measure)


@dataclass(frozen=True)
class TreeCosts:
    """What each node of one tree costs, per example.

    ``node_macs[i]``: node i's transform and router (``router_macs[i]`` of it);
    ``paths[i]``: the node indices from the root to i inclusive; ``path_macs[i]``: the
    MACs of that path, i.e. what an example classified at leaf i has cost under the
    learned policy. ``policy_path_macs`` gives the same for any routing policy.
    """

    node_macs: tuple[int, ...]
    router_macs: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]
    path_macs: tuple[int, ...]
    threshold_path_macs: tuple[int, ...]
    oracle_path_macs: tuple[int, ...]
    #: Per node, the node whose arrival pays its MACs in expectation (itself, except for a
    #: boosted tree's exits at junctions: everyone reaching the junction runs their heads).
    charged_at: tuple[int, ...] = ()

    def base_path_macs(self) -> dict[str, tuple[int, ...]]:
        """Per cost model, what an example classified at each node has cost.

        ``learned``: every node's transform and router on the path. ``threshold``: the
        transforms, every exit head at each junction passed (they are how an exit rule
        decides), and a router only where it chooses among several non-exit sinks.
        ``oracle``: the transforms and the exit taken, nothing spent on deciding. A policy
        adds what its answers and measures cost (``policy_path_macs``).
        """
        return {
            "learned": self.path_macs,
            "threshold": self.threshold_path_macs,
            "oracle": self.oracle_path_macs,
        }

    def path_matrix(self) -> torch.Tensor:
        """(nodes, nodes) 0/1 matrix whose row i marks the nodes on i's root path."""
        matrix = torch.zeros(len(self.paths), len(self.paths), dtype=torch.long)
        for index, path in enumerate(self.paths):
            matrix[index, list(path)] = 1
        return matrix

    def expected_macs(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-example MACs expected under per-node arrival probabilities."""
        at = self.charged_at or range(len(self.node_macs))
        return sum(probabilities[a] * float(m) for a, m in zip(at, self.node_macs, strict=True))


#: The attribute under which a tree keeps its cost table (a plain attribute: a compiled
#: loss reads it without guarding on a global cache).
_CACHE_ATTRIBUTE = "_dynroute_costs"


def tree_costs(tree: RoutedTree) -> TreeCosts:
    """The tree's cost table, counted on first use (a traced pass) and kept with the tree."""
    costs = tree.__dict__.get(_CACHE_ATTRIBUTE)
    if costs is None:
        transform, router = count_macs(tree)
        macs = [t + r for t, r in zip(transform, router, strict=True)]
        paths = tuple(tuple(tree.path_to(i)) for i in range(len(tree.nodes)))
        base = base_path_macs(tree.shape, transform, router)
        charged_at = list(range(len(tree.nodes)))
        if tree.boost:  # every answer needs the answers of the exits passed: their heads run
            for i in range(len(tree.nodes)):
                if tree.nodes[i].is_leaf and tree.shape.decided_at_junction(i):
                    charged_at[i] = tree.parent[i]
        costs = TreeCosts(
            node_macs=tuple(macs),
            router_macs=tuple(router),
            paths=paths,
            path_macs=tuple(base["learned"]),
            threshold_path_macs=tuple(base["threshold"]),
            oracle_path_macs=tuple(base["oracle"]),
            charged_at=tuple(charged_at),
        )
        tree.__dict__[_CACHE_ATTRIBUTE] = costs
    return costs


def policy_path_macs(tree: RoutedTree, policy: Policy) -> tuple[int, ...]:
    """Per node, what an example classified there costs under ``policy``
    (``dynroute.core.decisions.path_macs`` on the tree's cost table)."""
    costs = tree_costs(tree)
    return tuple(path_macs(policy, tree.shape, tree.num_classes, costs.base_path_macs()))
