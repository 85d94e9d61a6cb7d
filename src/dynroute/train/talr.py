"""Throughput-adjusted learning rates (paper §4.5).

Each node's parameters (its transformation and router) have their gradient
multiplied by 1 / sqrt(mean over the batch of p_train^2), so that layers
reached by few examples learn as fast as layers every example goes through.
The paper writes ||p||^-1; the two differ by the constant sqrt(batch size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynroute.nn.tree import RoutedTree

#: Smallest root-mean-square arrival probability used; avoids dividing by an underflowed 0.
MIN_RMS = 1e-20


def talr_scales(arrival: Sequence[torch.Tensor]) -> torch.Tensor:
    """One scale per node: 1 / sqrt(mean_batch p^2), from detached probabilities."""
    rms = torch.stack(list(arrival), dim=1).detach().float().pow(2).mean(dim=0).sqrt()
    return 1.0 / rms.clamp_min(MIN_RMS)


@torch.no_grad()
def apply_talr(tree: RoutedTree, scales: torch.Tensor) -> None:
    """Scale each node's parameter gradients in place (call after backward).

    The scales stay tensors: reading them on the host would make every GPU
    training step wait for its own backward pass.
    """
    for node, scale in zip(tree.nodes, scales, strict=True):
        grads = [p.grad for p in node.own_parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
