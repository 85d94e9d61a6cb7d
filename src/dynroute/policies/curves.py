"""Accuracy-MACs curves: one point type and one frontier, for every comparison of costs.

A curve is a set of operating points (mean MACs, accuracy): the networks of an experiment,
the thresholds of a policy, the oracle's bound. Under a budget one picks the best point
that fits, so every comparison reads a curve through its *frontier*: each point credited
with the best accuracy of any point at no more MACs (a deeper net that trained worse than
a shallower one lowers no bar). Between frontier points the curve is interpolated
linearly, as mixing two operating points over the inputs would give.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CurvePoint:
    """One (mean MACs, accuracy) point; ``num_examples`` gives its binomial noise."""

    experiment: str
    network: str
    k_cpt: float | None
    mean_macs: float
    accuracy: float
    num_examples: int = 0

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    @property
    def standard_error(self) -> float:
        """Binomial standard error of the accuracy (nan when the count is unknown)."""
        if self.num_examples <= 0:
            return math.nan
        return math.sqrt(self.accuracy * (1.0 - self.accuracy) / self.num_examples)


def as_points(rows: Iterable[Mapping[str, Any] | CurvePoint], label: str = "") -> list[CurvePoint]:
    """Curve points from result-file dicts (``accuracy``, ``mean_macs``) or points, by MACs."""
    points = [
        row
        if isinstance(row, CurvePoint)
        else CurvePoint(
            label,
            str(row.get("network", "")),
            row.get("k_cpt"),
            float(row["mean_macs"]),
            float(row["accuracy"]),
            int(row.get("num_examples", 0)),
        )
        for row in rows
    ]
    return sorted(points, key=lambda p: p.mean_macs)


def frontier_accuracies(points: Sequence[CurvePoint]) -> list[float]:
    """Each point's accuracy, or a cheaper point's where that is higher (points in MAC
    order): the curve as a budget sees it."""
    best, out = -math.inf, []
    for p in points:
        best = max(best, p.accuracy)
        out.append(best)
    return out


def frontier_errors(points: Sequence[CurvePoint]) -> list[float]:
    """``frontier_accuracies`` as errors (1 − accuracy)."""
    return [1.0 - a for a in frontier_accuracies(points)]


def accuracy_at(points: Sequence[CurvePoint], macs: float) -> float | None:
    """The frontier's accuracy at ``macs`` (points in MAC order), interpolated linearly;
    None outside the curve's MAC range."""
    xs = [p.mean_macs for p in points]
    if not xs or macs < xs[0] or macs > xs[-1]:
        return None
    return float(np.interp(macs, xs, frontier_accuracies(points)))


def error_at(points: Sequence[CurvePoint], macs: float) -> float | None:
    """``accuracy_at`` as an error; None outside the curve's MAC range."""
    accuracy = accuracy_at(points, macs)
    return None if accuracy is None else 1.0 - accuracy


def macs_for_accuracy(points: Sequence[CurvePoint], accuracy: float) -> float | None:
    """Fewest mean MACs at which the curve reaches ``accuracy``: on its frontier, linear
    between the points where the frontier rises; None if it never does."""
    ordered = sorted(points, key=lambda p: p.mean_macs)
    rising: list[CurvePoint] = []
    for p in ordered:
        if not rising or p.accuracy > rising[-1].accuracy:
            rising.append(p)
    for a, b in zip([None, *rising], rising, strict=False):
        if b.accuracy >= accuracy:
            if a is None:
                return b.mean_macs
            t = (accuracy - a.accuracy) / (b.accuracy - a.accuracy)
            return a.mean_macs + t * (b.mean_macs - a.mean_macs)
    return None
