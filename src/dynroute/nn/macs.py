"""Multiply-accumulate accounting, as the paper's implementation counts them.

A convolution costs H_out * W_out * k_h * k_w * C_in / groups * C_out, a
linear layer n_in * n_out; batch norm, ReLU, pooling and resizing cost 0.
Counts come from the shapes seen in one traced forward pass, so any
``nn.Module`` built from convolutions and linear layers is counted exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from dynroute.nn.tree import RoutedTree


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv/linear call per example, from its output shape."""
    per_example_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        c_in = module.in_channels // module.groups
        return per_example_outputs * c_in * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return per_example_outputs * module.in_features
    return 0


def _trace(tree: RoutedTree, measure: Callable[[int, object, object], int]) -> list[int]:
    """Run every node once on a single example and measure each node's work."""
    device = next(tree.parameters()).device
    x = torch.zeros((1, *tree.input_shape), device=device)
    k_feature = tree.router_k_cpt(0.0, 1, x)
    counts = [0] * len(tree.nodes)
    was_training = tree.training
    tree.eval()
    try:
        with torch.no_grad():
            stack = [(0, x)]
            while stack:
                index, signal = stack.pop()
                counts[index], out = measure(index, signal, k_feature)
                stack.extend((c, out) for c in tree.children_of[index])
    finally:
        tree.train(was_training)
    return counts


def count_node_macs(tree: RoutedTree) -> list[int]:
    """Analytic MACs of every node (its transform and router), per example."""

    def measure(index, signal, k_feature):
        total = 0

        def hook(module, _inputs, output):
            nonlocal total
            total += layer_macs(module, output)

        handles = [
            m.register_forward_hook(hook)
            for own in tree.nodes[index].own_modules()
            for m in own.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        try:
            out, _ = tree.run_node(index, signal, k_feature)
        finally:
            for h in handles:
                h.remove()
        return total, out

    return _trace(tree, measure)


def flop_counter_macs(tree: RoutedTree) -> list[int]:
    """Per-node MACs according to ``torch.utils.flop_counter`` (FLOPs / 2).

    An independent count used to cross-check ``count_node_macs``.
    """

    def measure(index, signal, k_feature):
        counter = FlopCounterMode(display=False)
        with counter:
            out, _ = tree.run_node(index, signal, k_feature)
        return counter.get_total_flops() // 2, out

    return _trace(tree, measure)
