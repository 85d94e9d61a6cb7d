"""A MAC budget that holds on data unlike the validation split: ``serve --target-macs M
--hold`` (and ``BudgetHold`` in Python).

An operating point chosen on validation spends its budget on data like validation. On
other data (plainer images, another camera) examples leave at other exits, and the same
point may spend twice the budget. ``BudgetHold`` watches what the network really spends
over a sliding window of the last examples, estimates how far the data has drifted (the
ratio of the MACs spent to what the points in use spent on validation), and moves to the
operating point whose validation cost, scaled by that ratio, meets the budget: the most
accurate such point of those the export carries (``dynroute.core.selection``). Mean MACs then
stay within a few percent of the budget when the inputs drift, and the shift is reported.
Torch-free.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from dynroute.core.selection import frontier, within_budget

#: Examples over which the spending is watched.
DEFAULT_WINDOW = 1024
#: How far (a share of the budget) the window mean may stray before the point moves.
DEFAULT_TOLERANCE = 0.03
WINDOW = checks.Range(
    checks.Bounds(1, 10**7), True, "examples whose MACs are remembered to estimate the drift"
)
TOLERANCE = checks.Range(
    checks.Bounds(0, 1, high_open=True), False, "a share of the budget the mean may stray by"
)


class BudgetHold:
    """Runs ``model`` (an ``ExportedModel``) at the point that keeps the mean MACs of the
    last ``window`` examples at ``target_macs`` (see the module's docstring)."""

    def __init__(
        self,
        model: Any,
        target_macs: float,
        window: int = DEFAULT_WINDOW,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        from dynroute.deploy.manifest import stored_points

        checks.target_macs(target_macs, required=True)
        checks.in_range(window, "window", WINDOW)
        checks.in_range(tolerance, "tolerance", TOLERANCE)
        points = stored_points(model.manifest)
        if len(points) < 2:
            raise DynrouteError(
                "holding a budget needs an export that carries operating points (export the "
                "run with its validation data and a policy with thresholds)"
            )
        self.points = sorted(frontier(points), key=lambda p: p.mean_macs)
        self.base = model
        self.target = float(target_macs)
        self.tolerance = tolerance
        self.spent: deque[float] = deque(maxlen=window)
        self.expected: deque[float] = deque(maxlen=window)
        self.ratio = 1.0
        self.moves = 0
        self._select(self.target)

    def _select(self, validation_budget: float) -> None:
        chosen = within_budget(self.points, validation_budget) or self.points[0]
        self.current = chosen
        k_cpt = chosen.entry.get("k_cpt") if self.base.dynamic_k_cpt else self.base.k_cpt
        self.model = self.base.with_policy(chosen.entry["policy"], k_cpt)

    def predict(self, x: Any) -> Any:
        """The current point's prediction of ``x``; then the point moves if the window's
        spending has drifted off the budget."""
        prediction = self.model.predict(x)
        self.spent.extend(float(m) for m in prediction.macs)
        self.expected.extend([self.current.mean_macs] * len(prediction))
        self._update()
        return prediction

    __call__ = predict

    def _update(self) -> None:
        if len(self.spent) < min(64, self.spent.maxlen or 64):
            return
        self.ratio = float(np.mean(self.spent)) / float(np.mean(self.expected))
        mean = float(np.mean(self.spent))
        if abs(mean / self.target - 1) <= self.tolerance:
            return
        previous = self.current
        self._select(self.target / self.ratio)
        if self.current is not previous:
            self.moves += 1

    def state(self) -> dict[str, Any]:
        """What ``/metrics`` reports: the budget, the window's mean, the drift ratio and the
        point in use."""
        return {
            "target_macs": self.target,
            "window_mean_macs": float(np.mean(self.spent)) if self.spent else None,
            "window_examples": len(self.spent),
            "drift_ratio": self.ratio,
            "point_validation_macs": self.current.mean_macs,
            "point_validation_accuracy": self.current.accuracy,
            "moves": self.moves,
        }
