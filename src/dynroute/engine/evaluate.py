"""Evaluation with the early-exit engine: the statistics of ``dynroute.nn.evaluation``,
computed by running only the nodes each example reaches.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from dynroute.core.policy import LEARNED, Policy
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn import evaluation
from dynroute.nn.evaluation import Evaluation, every_exit_accuracy
from dynroute.nn.prediction import Prediction, predict_dense
from dynroute.nn.tree import RoutedTree
from dynroute.platform.devices import bf16_on

__all__ = ["Evaluation", "evaluate", "every_exit_accuracy"]


def evaluate(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    k_cpt: float | None = None,
    method: Literal["dense", "engine"] = "dense",
    progress: bool = False,
    policy: Policy = LEARNED,
    bf16: bool = False,
) -> Evaluation:
    """Evaluate ``tree`` routed by ``policy`` on (N, C, H, W) ``images`` and ``labels``.

    ``method="engine"`` runs only the nodes each example reaches; ``"dense"`` (the default)
    runs every node (the reference: same results, more work). The oracle policy needs
    every exit's answer, so it always runs densely. ``bf16``: the nodes in bfloat16 where
    the device computes it natively (``devices.bf16_on``). The tree's training mode is
    restored.
    """
    if method not in ("dense", "engine"):
        raise ValueError(f"method must be 'dense' or 'engine', got {method!r}")
    predictor = None
    if method == "engine" and policy.deployable:
        if device is not None:
            tree.to(device)
        engine = EarlyExitEngine(tree, policy=policy, bf16=bf16)
        predictor = lambda x, k, y: engine(x, k)  # noqa: E731
    elif bf16 and bf16_on(next(tree.parameters()).device, True):

        def predictor(x: torch.Tensor, k: Any, y: torch.Tensor) -> Prediction:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return predict_dense(tree, x, k, policy=policy, labels=y)

    return evaluation.routing_statistics(
        tree, images, labels, batch_size, device, k_cpt, progress, policy, predictor
    )
