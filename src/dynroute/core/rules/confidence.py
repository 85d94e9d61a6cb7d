"""The confidence rule: leave at the first exit whose top softmax probability reaches the
threshold (the most common early-exit rule; BranchyNet, MSDNet's anytime setting)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dynroute.core.probabilities import confidence
from dynroute.core.rules.base import ExitRule, register_rule


@register_rule
class Confidence(ExitRule):
    name = "confidence"
    summary = "leave at the first exit whose max softmax is >= the threshold"

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        return confidence(answer)
