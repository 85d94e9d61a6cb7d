"""The rule that picks an operating point for a target, in one place and without torch:
``dynroute calibrate`` applies it to points measured in PyTorch, an export
(``dynroute.deploy``) to the points its manifest carries.

An operating point is anything with ``mean_macs`` and ``accuracy`` (measured on held-out
data); ``family`` groups the points that form a near-continuous family (one run's
thresholds of one exit rule, a dynamic-k_cpt net's k_cpt inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

from dynroute.errors import DynrouteError


class OperatingPoint(Protocol):
    mean_macs: float
    accuracy: float


Point = TypeVar("Point", bound=OperatingPoint)


def choose(
    points: Sequence[Point],
    target_macs: float | None,
    target_accuracy: float | None,
    family: Callable[[Any], Hashable] = lambda point: None,
) -> Point:
    """The operating point that meets the target; an unreachable one is refused with the
    range the points do reach.

    A MAC budget: within each family, the point that spends most of it (so the choice
    lands on the budget rather than below it); across families, the most accurate of
    those. An accuracy target: the cheapest point that reaches it.
    """
    if (target_macs is None) == (target_accuracy is None):
        raise DynrouteError("give exactly one of `target_macs` and `target_accuracy`")
    if not points:
        raise DynrouteError("there is no operating point to choose from")
    if target_macs is not None:
        feasible = [p for p in points if p.mean_macs <= target_macs]
        if not feasible:
            raise DynrouteError(
                f"no operating point stays within {target_macs / 1e6:.3f} M MACs; reachable: "
                f"{min(p.mean_macs for p in points) / 1e6:.3f} to "
                f"{max(p.mean_macs for p in points) / 1e6:.3f} M"
            )
        per_family: dict[Hashable, Point] = {}
        for p in feasible:
            best = per_family.get(family(p))
            if best is None or (p.mean_macs, p.accuracy) > (best.mean_macs, best.accuracy):
                per_family[family(p)] = p
        return max(per_family.values(), key=lambda p: (p.accuracy, p.mean_macs))
    feasible = [p for p in points if p.accuracy >= target_accuracy]
    if not feasible:
        raise DynrouteError(
            f"no operating point reaches accuracy {target_accuracy:.4f}; reachable: "
            f"{min(p.accuracy for p in points):.4f} to {max(p.accuracy for p in points):.4f}"
        )
    return min(feasible, key=lambda p: (p.mean_macs, -p.accuracy))


def thin(points: Sequence[Point], count: int, family: Callable[[Any], Hashable]) -> list[Point]:
    """At most about ``count`` points per family, spread evenly over its MAC range (always
    keeping its cheapest and dearest), so a budget still lands close to where the full set
    would put it. Used to keep an export's manifest small."""
    groups: dict[Hashable, dict[float, Point]] = {}
    for p in points:  # at equal MACs a family's choice is its most accurate point
        same = groups.setdefault(family(p), {})
        if p.mean_macs not in same or p.accuracy > same[p.mean_macs].accuracy:
            same[p.mean_macs] = p
    kept: list[Point] = []
    for by_macs in groups.values():
        group = sorted(by_macs.values(), key=lambda p: p.mean_macs)
        if len(group) <= count:
            kept += group
            continue
        low, high = group[0].mean_macs, group[-1].mean_macs
        step = (high - low) / (count - 1)
        slots: dict[int, Point] = {}
        for p in group:  # the last (most accurate at equal MACs) point of each slot
            slots[round((p.mean_macs - low) / step) if step > 0 else 0] = p
        kept += [group[0], *(p for p in slots.values() if p is not group[0])]
    return kept
