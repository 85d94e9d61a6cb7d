"""The rule that picks an operating point for a target, in one place and without torch:
``dynroute calibrate`` and the policy tables apply it to points measured in PyTorch, an
export (``dynroute.deploy``) to the points its manifest carries.

An operating point is anything with ``mean_macs`` and ``accuracy`` (measured on held-out
data). A MAC budget takes the most accurate point that spends at most the budget (the
dearest of equally accurate ones: nothing says the cheaper one is better); an accuracy
target takes the cheapest point that reaches it (the most accurate of equally cheap ones).
Ties beyond that go to the first point given, so the choice is reproducible. For
measurements, ``sufficient_within_budget`` adds the one-standard-error rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

from dynroute.core.errors import DynrouteError


class Measured(Protocol):
    mean_macs: float
    accuracy: float


Point = TypeVar("Point", bound=Measured)


def within_budget(points: Sequence[Point], target_macs: float) -> Point | None:
    """The most accurate point spending at most ``target_macs`` (None if none does)."""
    best = None
    for p in points:
        if p.mean_macs <= target_macs and (
            best is None or (p.accuracy, p.mean_macs) > (best.accuracy, best.mean_macs)
        ):
            best = p
    return best


def sufficient_within_budget(
    points: Sequence[Point], target_macs: float, examples: int
) -> Point | None:
    """The cheapest point within one standard error of the most accurate point spending at
    most ``target_macs`` (the accuracies measured on ``examples`` examples): where more
    spend buys nothing distinguishable from noise, it is not spent (the one-standard-error
    rule; the equal-footing tables choose this way)."""
    best = within_budget(points, target_macs)
    if best is None:
        return None
    error = math.sqrt(best.accuracy * (1.0 - best.accuracy) / examples) if examples > 0 else 0.0
    affordable = [p for p in points if p.mean_macs <= target_macs]
    return reaching(affordable, best.accuracy - error)


def reaching(points: Sequence[Point], target_accuracy: float) -> Point | None:
    """The cheapest point whose accuracy is at least ``target_accuracy`` (None if none)."""
    best = None
    for p in points:
        if p.accuracy >= target_accuracy and (
            best is None or (p.mean_macs, -p.accuracy) < (best.mean_macs, -best.accuracy)
        ):
            best = p
    return best


def choose(
    points: Sequence[Point], target_macs: float | None, target_accuracy: float | None
) -> Point:
    """The operating point that meets the target; an unreachable one is refused with the
    range the points do reach."""
    if (target_macs is None) == (target_accuracy is None):
        raise DynrouteError("give exactly one of `target_macs` and `target_accuracy`")
    if not points:
        raise DynrouteError("there is no operating point to choose from")
    if target_macs is not None:
        chosen = within_budget(points, target_macs)
        if chosen is None:
            raise DynrouteError(
                f"no operating point stays within {target_macs / 1e6:.3f} M MACs; reachable: "
                f"{min(p.mean_macs for p in points) / 1e6:.3f} to "
                f"{max(p.mean_macs for p in points) / 1e6:.3f} M"
            )
        return chosen
    assert target_accuracy is not None
    chosen = reaching(points, target_accuracy)
    if chosen is None:
        raise DynrouteError(
            f"no operating point reaches accuracy {target_accuracy:.4f}; reachable: "
            f"{min(p.accuracy for p in points):.4f} to {max(p.accuracy for p in points):.4f}"
        )
    return chosen


def frontier(points: Sequence[Point]) -> list[Point]:
    """The points ``choose`` can ever pick, in their given order: those at least as
    accurate as every point that costs no more (the first of exact duplicates). An export
    stores these, so it chooses every budget exactly as its run does."""
    order = sorted(range(len(points)), key=lambda i: (points[i].mean_macs, i))
    keep: set[int] = set()
    seen: set[tuple[float, float]] = set()
    best = float("-inf")
    start = 0
    while start < len(order):  # points of equal MACs together: each against the cheaper ones
        end = start
        macs = points[order[start]].mean_macs
        while end < len(order) and points[order[end]].mean_macs == macs:
            end += 1
        group = order[start:end]
        top = max(points[i].accuracy for i in group)
        best = max(best, top)
        for i in group:
            key = (points[i].mean_macs, points[i].accuracy)
            if points[i].accuracy >= best and key not in seen:
                seen.add(key)
                keep.add(i)
        start = end
    return [points[i] for i in sorted(keep)]
