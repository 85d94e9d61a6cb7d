"""Exits and routers: small heads on a node's flattened coarsest map."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dynroute.nn.tree import coarsest

BN_EPS = 1e-6
BN_MOMENTUM = 0.1  # PyTorch's convention for the paper's running-average decay 0.9


def init_weights(module: nn.Module) -> None:
    """Gaussian weights with std 1/sqrt(fan_in), zero biases (docs/method.md §2)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Classifier(nn.Module):
    """One linear layer on the flattened coarsest map; outputs logits."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        init_weights(self)

    def forward(self, signal: Any) -> torch.Tensor:
        return self.linear(coarsest(signal))

    def reads(self, signal: Any) -> torch.Tensor:
        """The part of ``signal`` this head uses: the engine compacts only that."""
        return coarsest(signal)


class Router(nn.Module):
    """Linear(16)-BN-ReLU-Linear(16)-BN-ReLU-Linear(n_sinks), last layer zero.

    With ``k_cpt_input`` the router also sees 1e7 * k_cpt as one extra feature
    (dynamic k_cpt, paper §4.6). The zero last layer makes every router start
    undecided.
    """

    def __init__(
        self, in_features: int, n_sinks: int, hidden: int = 16, k_cpt_input: bool = False
    ) -> None:
        super().__init__()
        self.k_cpt_input = k_cpt_input
        self.layers = nn.Sequential(
            nn.Linear(in_features + int(k_cpt_input), hidden),
            nn.BatchNorm1d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, n_sinks),
        )
        init_weights(self)
        nn.init.zeros_(self.layers[-1].weight)

    def reads(self, signal: Any) -> torch.Tensor:
        """The part of ``signal`` the router uses: its scores can be recomputed from this
        alone (for many k_cpt values, say) without keeping the whole signal."""
        return coarsest(signal)

    def forward(self, signal: Any, k_feature: torch.Tensor | None = None) -> torch.Tensor:
        features = coarsest(signal)
        if self.k_cpt_input:
            if k_feature is None:
                raise ValueError("this router needs the k_cpt feature")
            features = torch.cat([features, k_feature.to(features.dtype)], dim=1)
        return self.layers(features)
