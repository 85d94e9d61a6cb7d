"""Helpers that make hard routing non-trivial for inference tests.

Freshly built routers have a zero last layer, so every example would take the
first sink; these helpers give routers random last layers and batch norm the
statistics of a real batch, so decisions differ between examples.
"""

from __future__ import annotations

import torch
from torch import nn

from dynroute.core.policy import Policy
from dynroute.core.rules.scheduler import SCHEDULER_FEATURES
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.tree import Node, RoutedTree


def scramble_routing(
    tree: RoutedTree, images: torch.Tensor, k_cpt: torch.Tensor | float | None = None
) -> RoutedTree:
    """Random router last layers; batch-norm running statistics from ``images``; eval mode."""
    for j in tree.junctions:
        last = [m for m in tree.nodes[j].router.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.normal_(last.weight)
        nn.init.zeros_(last.bias)
    norms = [m for m in tree.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        tree.train().forward_dense(images, k_cpt)
    for m in norms:
        m.momentum = 0.1
    return tree.eval()


class ConvBlock(nn.Sequential):
    """conv3x3-BN-ReLU keeping a 4x4 map, the smallest real multi-channel node."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


def random_conv_tree(
    seed: int,
    channels: int = 4,
    num_classes: int = 5,
    max_depth: int = 4,
    dynamic: bool = False,
    boost: float = 0.0,
) -> RoutedTree:
    """A random tree of conv nodes on 3x4x4 images with junction fan-outs of 2 or 3."""
    gen = torch.Generator().manual_seed(seed)
    features = channels * 16
    counter = iter(range(10_000))

    def build(depth: int, c_in: int) -> Node:
        i = next(counter)
        sinks = [Node(Classifier(features, num_classes), name=f"exit{i}")]
        if depth < max_depth:
            n_next = int(torch.randint(0, 3, (1,), generator=gen))
            sinks += [build(depth + 1, channels) for _ in range(n_next)]
        router = Router(features, len(sinks), k_cpt_input=dynamic) if len(sinks) > 1 else None
        return Node(ConvBlock(c_in, channels), sinks, router, name=f"node{i}")

    torch.manual_seed(seed)
    root = Node(ConvBlock(3, channels), [build(1, channels), build(1, channels)],
                Router(features, 2, k_cpt_input=dynamic), name="root")  # fmt: skip
    return RoutedTree(root, (3, 4, 4), num_classes, dynamic_k_cpt=dynamic, boost=boost)


def random_scheduler(tree, gen: torch.Generator) -> dict:
    """Scheduler models with random coefficients for ``tree``'s exits
    (``dynroute.core.rules.scheduler``)."""
    shape = tree.shape
    width = len(SCHEDULER_FEATURES)
    exits = []
    for position, leaf in enumerate(shape.leaves):
        deeper = [shape.leaf_position[d] for d in shape.deeper[leaf]]
        if not deeper:
            exits.append(None)
            continue
        targets = [position, *deeper]
        exits.append(
            {
                "targets": targets,
                "mean": (0.1 * torch.randn(width, generator=gen)).tolist(),
                "scale": (0.5 + torch.rand(width, generator=gen)).tolist(),
                "coefficients": torch.randn(len(targets), width, generator=gen).tolist(),
                "intercepts": torch.randn(len(targets), generator=gen).tolist(),
                "extra_macs": [0.0, *(1e5 * (1 + k) for k in range(len(deeper)))],
            }
        )
    return {"features": list(SCHEDULER_FEATURES), "exits": exits}


def fitted_policies(tree, seed: int) -> list[Policy]:
    """Policies with random fitted parameters for ``tree``'s exits: per-exit thresholds on
    raw answers, rules on calibrated and combined answers, a scheduler, and the routers with
    calibrated and combined answers."""
    gen = torch.Generator().manual_seed(seed)
    leaves = tree.leaves
    thresholds = (0.5 + 0.45 * torch.rand(len(leaves), generator=gen)).tolist()
    history = tree.shape.history
    weights = [
        (0.2 + torch.rand(len(history[leaf]) + 1, generator=gen)).tolist() for leaf in leaves
    ]
    scales = [
        [0.0] * len(history[leaf]) + [float(0.5 + torch.rand(1, generator=gen))] for leaf in leaves
    ]
    biases = [(0.3 * torch.randn(tree.num_classes, generator=gen)).tolist() for _ in leaves]
    combined = {"answers": "combined", "weights": weights, "biases": biases}
    calibrated = {"answers": "calibrated", "weights": scales, "biases": biases}
    return [
        Policy("budgeted", thresholds=thresholds),
        Policy("confidence", 0.45, **combined),
        Policy("budgeted", thresholds=thresholds, **combined),
        Policy("entropy", 0.6, **calibrated),
        Policy("scheduler", -0.02, scheduler=random_scheduler(tree, gen), **combined),
        Policy("learned", **calibrated),
        Policy("learned", **combined),
    ]
