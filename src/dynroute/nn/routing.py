"""Routing decisions on PyTorch outputs: ``dynroute.core.decisions`` applied to tensors.

Every policy decides through ``dynroute.core.decisions.Decider`` (NumPy), the one
implementation the engine, the export runtime and the policy tables share; this module
moves tensors across and adds the oracle, which needs labels and so never runs outside
an analysis.
"""

from __future__ import annotations

import numpy as np
import torch

from dynroute.core.decisions import Decider
from dynroute.core.policy import Policy
from dynroute.nn.tree import RoutedTree


def decider(tree: RoutedTree, policy: Policy) -> Decider:
    """``policy`` bound to ``tree`` (its parameters checked against the tree's exits)."""
    return Decider(policy, tree.shape, tree.num_classes)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def dense_choices(
    tree: RoutedTree,
    policy: Policy,
    logits: dict[int, torch.Tensor],
    scores: dict[int, torch.Tensor],
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """From a dense pass (every exit's logits, every router's scores): every exit's answer
    under ``policy`` (by leaf) and every junction's choice (sink position per example)."""
    rule = decider(tree, policy)
    answers, measures = rule.every_exit({leaf: to_numpy(z) for leaf, z in logits.items()})
    needed = {j: to_numpy(s) for j, s in scores.items() if rule.runs_router(j)}
    return answers, rule.dense_choices(measures, needed)


def oracle_exits(
    logits: dict[int, torch.Tensor], labels: torch.Tensor, leaves: list[int], leaf_macs: list[int]
) -> torch.Tensor:
    """Each example's cheapest correct exit (node index), or the cheapest exit if none is."""
    order = sorted(range(len(leaves)), key=lambda k: leaf_macs[k])
    correct = torch.stack([logits[leaves[k]].argmax(dim=1) == labels for k in order], dim=1)
    first = correct.to(torch.uint8).argmax(dim=1)  # 0 (the cheapest) when none is correct
    return torch.tensor([leaves[k] for k in order], device=labels.device)[first]
