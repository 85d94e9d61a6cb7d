"""The entropy rule: leave at the first exit whose answer's normalised entropy is at most
the threshold (BranchyNet's criterion)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dynroute.core.probabilities import normalised_entropy
from dynroute.core.rules.base import ExitRule, register_rule


@register_rule
class Entropy(ExitRule):
    name = "entropy"
    summary = "leave at the first exit whose normalised entropy is <= the threshold"
    passes_below = True

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        return normalised_entropy(answer)
