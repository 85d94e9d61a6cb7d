"""Tiny random trees on vector inputs, shared by the unit tests."""

from __future__ import annotations

import torch
from torch import nn

from dynroute.nn.heads import Classifier, Router
from dynroute.nn.tree import Node, RoutedTree


def random_tree(
    seed: int,
    features: int = 6,
    num_classes: int = 3,
    max_depth: int = 3,
    dynamic_k_cpt: bool = False,
    boost: float = 0.0,
) -> RoutedTree:
    """A random tree of Linear+ReLU nodes with 1-3 sinks and non-zero routers (boosted
    exits with ``boost``)."""
    gen = torch.Generator().manual_seed(seed)
    counter = iter(range(10_000))

    def build(depth: int) -> Node:
        i = next(counter)
        transform = nn.Sequential(nn.Linear(features, features), nn.ReLU())
        fan_out = 1 if depth >= max_depth else int(torch.randint(1, 4, (1,), generator=gen))
        sinks = [Node(Classifier(features, num_classes), name=f"exit{i}")]
        if depth < max_depth:
            sinks += [build(depth + 1) for _ in range(fan_out)]
        router = None
        if len(sinks) > 1:
            router = Router(features, len(sinks), k_cpt_input=dynamic_k_cpt)
            nn.init.normal_(router.layers[-1].weight, std=1.0, generator=gen)
        return Node(transform, sinks, router, name=f"node{i}")

    torch.manual_seed(seed)
    return RoutedTree(build(0), (features,), num_classes, dynamic_k_cpt=dynamic_k_cpt, boost=boost)
