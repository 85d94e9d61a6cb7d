"""Routed chains from any list of stages: an exit after each stage, a router between.

``routed_chain(stages, num_classes)`` turns a backbone cut into stages (ResNet's layers,
MobileNet's feature groups, your own blocks) into a ``RoutedTree``: stage k's node has
two sinks, its exit ``exitk`` ("classify now") and stage k + 1, and a router choosing
between them; the last stage has only its exit. ``static_truncation(stages, depth, ...)``
is the statically-routed baseline: the first ``depth`` stages and one exit, no routers.

Heads average-pool the stage's map to ``head_pool`` x ``head_pool`` first, so an exit or
router costs the same small linear layers whatever the map size (a stage's output at
224 px is far too large to flatten). Channel counts come from one dummy forward pass, so
any stage that maps (N, C, H, W) to (N, C', H', W') fits without being described.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.tree import Node, RoutedTree, evaluation_mode

#: One example of the paper's images; stages of other inputs say their own shape.
DEFAULT_INPUT_SHAPE = (3, 32, 32)


def coarsest_map(signal: Any) -> torch.Tensor:
    """The signal's coarsest map, unflattened (a tensor, or the last of a fine-to-coarse list)."""
    return signal[-1] if isinstance(signal, (list, tuple)) else signal


class PooledClassifier(Classifier):
    """An exit that averages the stage's map to ``pool`` x ``pool``, then one linear layer.

    ``reads`` returns the pooled map, so when the early-exit engine splits a batch it
    compacts only that; pooling an already pooled map again is the identity.
    """

    def __init__(self, channels: int, num_classes: int, pool: int = 1) -> None:
        super().__init__(channels * pool * pool, num_classes)
        self.pool = nn.AdaptiveAvgPool2d(pool)

    def reads(self, signal: Any) -> torch.Tensor:
        return self.pool(coarsest_map(signal))

    def forward(self, signal: Any) -> torch.Tensor:
        return self.linear(self.reads(signal).flatten(1))


class PooledRouter(Router):
    """A ``Router`` on the same pooled map as the exit beside it (k_cpt input included)."""

    def __init__(
        self,
        channels: int,
        n_sinks: int,
        pool: int = 1,
        hidden: int = 16,
        k_cpt_input: bool = False,
    ) -> None:
        super().__init__(channels * pool * pool, n_sinks, hidden, k_cpt_input)
        self.pool = nn.AdaptiveAvgPool2d(pool)

    def reads(self, signal: Any) -> torch.Tensor:
        return self.pool(coarsest_map(signal))

    def forward(self, signal: Any, k_feature: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(self.reads(signal), k_feature)


def stage_channels(stages: Sequence[nn.Module], input_shape: Sequence[int]) -> list[int]:
    """Output channels of each stage, from one dummy example (eval mode, no gradients).

    Runs on the stages' own device, the meta device included (checkpoint loading builds
    a skeleton there first).
    """
    if not stages:
        raise DynrouteError("a routed chain needs at least one stage")
    tensors = chain.from_iterable(chain(s.parameters(), s.buffers()) for s in stages)
    device = next((t.device for t in tensors), None)
    signal: Any = torch.zeros((1, *input_shape), device=device)
    channels = []
    with torch.no_grad():
        for k, stage in enumerate(stages, start=1):
            shape = tuple(coarsest_map(signal).shape[1:])
            try:
                with evaluation_mode(stage):
                    signal = stage(signal)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                message = f"stage {k} fails on inputs of shape {shape}: {first}"
                raise DynrouteError(message) from None
            out = coarsest_map(signal)
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise DynrouteError(
                    f"stage {k} must return (N, C, H, W) maps, got {getattr(out, 'shape', out)}"
                )
            channels.append(int(out.shape[1]))
    return channels


def _check_pool(head_pool: int) -> None:
    if isinstance(head_pool, bool) or not isinstance(head_pool, int) or head_pool < 1:
        raise DynrouteError(f"head_pool must be a positive integer, got {head_pool!r}")


def routed_chain_root(
    stages: Sequence[nn.Module],
    num_classes: int,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    dynamic_k_cpt: bool = False,
    head_pool: int = 1,
) -> Node:
    """The root node of ``routed_chain`` (what a registered model's builder returns)."""
    stages = list(stages)
    _check_pool(head_pool)
    channels = stage_channels(stages, input_shape)
    node: Node | None = None  # built from the last stage back, since a node needs its sinks
    for k in reversed(range(len(stages))):
        exit_node = Node(PooledClassifier(channels[k], num_classes, head_pool), name=f"exit{k + 1}")
        sinks = [exit_node] if node is None else [exit_node, node]
        router = None
        if len(sinks) > 1:
            router = PooledRouter(channels[k], len(sinks), head_pool, k_cpt_input=dynamic_k_cpt)
        node = Node(stages[k], sinks, router, name=f"stage{k + 1}")
    assert node is not None
    return node


def routed_chain(
    stages: Sequence[nn.Module],
    num_classes: int,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    dynamic_k_cpt: bool = False,
    head_pool: int = 1,
) -> RoutedTree:
    """A routed chain over ``stages``: after each, a router chooses its exit or the next stage.

    ``input_shape`` is one example's (C, H, W); ``dynamic_k_cpt`` feeds k_cpt to every
    router (docs/method.md §4.6); ``head_pool`` is the side of the pooled map that exits
    and routers read.
    """
    root = routed_chain_root(stages, num_classes, input_shape, dynamic_k_cpt, head_pool)
    return RoutedTree(root, tuple(input_shape), num_classes, dynamic_k_cpt=dynamic_k_cpt)


def static_truncation_root(
    stages: Sequence[nn.Module],
    depth: int,
    num_classes: int,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    head_pool: int = 1,
) -> Node:
    """The root node of ``static_truncation``."""
    stages = list(stages)
    if not 1 <= depth <= len(stages):
        raise DynrouteError(f"depth must be between 1 and {len(stages)}, got {depth}")
    stages = stages[:depth]
    _check_pool(head_pool)
    channels = stage_channels(stages, input_shape)
    node = Node(PooledClassifier(channels[-1], num_classes, head_pool), name="exit")
    for k in reversed(range(depth)):
        node = Node(stages[k], [node], name=f"stage{k + 1}")
    return node


def static_truncation(
    stages: Sequence[nn.Module],
    depth: int,
    num_classes: int,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    head_pool: int = 1,
) -> RoutedTree:
    """The first ``depth`` stages and one exit: the static baseline of ``routed_chain``'s
    exit ``depth``, trained as its own network (the static strategy)."""
    root = static_truncation_root(stages, depth, num_classes, input_shape, head_pool)
    return RoutedTree(root, tuple(input_shape), num_classes)
