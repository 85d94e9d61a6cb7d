"""What hard routing produces for a batch, and the dense reference that computes it.

``predict_dense`` is the reference: it evaluates every node on every example
(``RoutedTree.forward_dense``) and reads the routing off the policy's decision at every
junction (``dynroute.nn.routing``) and ``arrival_probabilities``. The early-exit engine
(``dynroute.engine.early_exit``) returns the same ``Prediction`` while running only the nodes
each example reaches, so tests and evaluators can use either one interchangeably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.nn.macs import policy_path_macs, tree_costs
from dynroute.nn.routing import dense_choices, oracle_exits
from dynroute.nn.tree import DenseOutput, RoutedTree


@dataclass
class Prediction:
    """Per-example outcome of hard routing.

    ``exits`` holds the pre-order index of the leaf that classified each
    example and ``macs`` the multiply-accumulates spent on it (every node on
    its root-to-exit path, routers included).
    """

    logits: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    def __len__(self) -> int:
        return int(self.exits.shape[0])


def check_images(x: torch.Tensor, input_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a batch the tree can route, or a ``DynrouteError`` saying what is wrong.

    The shape must be (N, *input_shape); floating-point images are cast to the model's
    dtype; integer images (e.g. uint8 pixels in 0..255) are refused, since the networks
    read intensities in [0, 1]; non-finite values are refused, since routing them would
    silently send them somewhere (argmax of NaN scores is the first sink).
    """
    x = torch.as_tensor(x)
    if x.dim() != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
        raise DynrouteError(
            f"images of shape {tuple(x.shape)} given; this network reads batches of {expected}"
        )
    if not x.is_floating_point():
        raise DynrouteError(
            f"images of dtype {x.dtype} given; pass floating-point intensities in [0, 1] "
            "(e.g. uint8 pixels / 255)"
        )
    if x.dtype != dtype:
        x = x.to(dtype)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise DynrouteError(
            f"{len(bad)} image(s) hold NaN or infinite values (first: index {int(bad[0])}); "
            "they cannot be routed"
        )
    return x


def as_tensor(data: Any, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` from an array or tensor (memory maps are copied, not shared)."""
    if isinstance(data, np.ndarray):
        # Datasets are read-only memory maps: copy into memory torch may own.
        return torch.from_numpy(np.array(data, copy=not data.flags.writeable)).to(dtype)
    return torch.as_tensor(data).to(dtype)


def predict_dense(
    tree: RoutedTree,
    x: torch.Tensor,
    k_cpt: torch.Tensor | float | None = None,
    policy: Policy = LEARNED,
    labels: torch.Tensor | None = None,
) -> Prediction:
    """The reference prediction for one batch under ``policy``: every node runs on every
    example, then each junction's decision is read off the outputs.

    ``labels`` are needed by the oracle policy only. Per-example MACs are what the policy
    pays for the path to the exit taken. The tree should be in eval mode.
    """
    with torch.inference_mode():
        weight = next(tree.parameters())
        x = check_images(x, tree.input_shape, weight.dtype).to(weight.device)
        return predict_from_outputs(tree, tree.forward_dense(x, k_cpt), x, policy, labels)


def predict_from_outputs(
    tree: RoutedTree,
    out: DenseOutput,
    x: torch.Tensor,
    policy: Policy = LEARNED,
    labels: torch.Tensor | None = None,
) -> Prediction:
    """``predict_dense`` from a dense pass already made (``out``, a ``DenseOutput`` of the
    batch ``x``): what routing it under ``policy`` gives."""
    with torch.inference_mode():
        n = x.shape[0]
        leaves = tree.leaves
        costs = tree_costs(tree)
        path_macs = torch.tensor(policy_path_macs(tree, policy), device=x.device)
        if policy.rule.needs_labels:
            if labels is None:
                raise DynrouteError(f"the {policy.name} policy needs the labels")
            leaf_macs = [costs.oracle_path_macs[leaf] for leaf in leaves]
            exits = oracle_exits(out.logits, labels.to(x.device), leaves, leaf_macs)
            logits = torch.stack([out.logits[i] for i in leaves], dim=1)[
                torch.arange(n, device=x.device), _positions(leaves, exits)
            ]
            return Prediction(logits, exits, path_macs[exits])
        answers, choices = dense_choices(tree, policy, out.logits, out.scores)
        branches = {
            j: nn.functional.one_hot(
                torch.from_numpy(choice).to(x.device), len(tree.children_of[j])
            ).to(x.dtype)
            for j, choice in choices.items()
        }
        arrival = tree.arrival_probabilities(branches, n, x)
        reached = torch.stack(arrival, dim=1) > 0.5
        leaf_logits = torch.stack(
            [torch.from_numpy(answers[i]).to(x.device) for i in leaves], dim=1
        )
        leaf_position = reached[:, leaves].to(torch.uint8).argmax(dim=1)
        logits = leaf_logits[torch.arange(n, device=x.device), leaf_position]
        exits = torch.tensor(leaves, device=x.device)[leaf_position]
        if policy.name == "learned" and policy.answers == "raw" and not tree.boost:
            # summed node by node: independent of the path table
            node_macs = torch.tensor(costs.node_macs, dtype=torch.long, device=x.device)
            macs = (reached.long() * node_macs).sum(dim=1)
        else:
            macs = path_macs[exits]
    return Prediction(logits, exits, macs)


def _positions(leaves: list[int], exits: torch.Tensor) -> torch.Tensor:
    """Index of each example's exit within ``leaves``."""
    lookup = torch.full((max(leaves) + 1,), -1, dtype=torch.long, device=exits.device)
    lookup[torch.tensor(leaves, device=exits.device)] = torch.arange(
        len(leaves), device=exits.device
    )
    return lookup[exits]
