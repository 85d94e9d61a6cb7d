"""Targets with a guarantee: operating points whose accuracy, agreement or cost holds on
new data, where the chance that the procedure certifies a point that misses is at most delta.

The method is Learn-then-Test (Angelopoulos et al. 2021) with fixed-sequence testing:

1. the calibration split is cut in two at random; on the first part (``fit``) every
   parameter is fitted (recalibrated or combined answers, the scheduler's models, the
   budgeted scheme's per-exit thresholds) and every family of operating points is built;
   the family that meets the target most cheaply there is kept, and its members ordered
   by how likely each is to meet the target as the first part measures it (the most
   accurate, or agreeing, first; for a budget the cheapest first): a path fixed before the
   second part is looked at. Ordering by accuracy rather than cost matters: a cost order
   tests the dearest point first, and where the deepest exit is not the most accurate
   that one point decides alone whether anything is certified;
2. on the second part (``test``), each member along the path is tested in turn, the null
   hypothesis being that it misses the target on new data; it is rejected when its
   p-value is at most delta, and the walk stops at the first member that is not;
3. every member rejected before the stop meets the target, all of them at once, with
   probability at least 1 - delta; the cheapest of them is chosen (for a MAC budget: the
   dearest, the most accurate one it affords).

What is bounded is the chance, over calibration samples, that the procedure certifies a
point that misses the target: not the chance that the point in hand misses. Near the
network's ceiling most samples certify nothing, and the few that do are lucky draws, so a
certified point there misses far more often than delta; ``certification`` estimates how
often the procedure certifies (resampling the testing part) and flags a target within a
few standard errors of the best accuracy the fitting part shows.

The p-values are finite-sample: for a 0/1 risk (an error, a disagreement with the full
model) the exact binomial tail (what Clopper-Pearson bounds invert); for mean MACs, a
bounded variable, the Hoeffding-Bentkus bound. What is promised assumes new data
exchangeable with the calibration split (drawn from the same distribution); nothing is
promised for data from elsewhere (docs/policies.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.core.guarantee import (
    METHOD_BINARY,
    METHOD_BOUNDED,
    TARGETS,
    Guarantee,
    binary_p_value,
    binomial_cdf,
    bounded_p_value,
    lower_bound,
    upper_bound_mean,
)

__all__ = [  # the finite-sample functions live with the torch-free guarantee, used here
    "binomial_cdf",
    "binary_p_value",
    "bounded_p_value",
    "lower_bound",
    "upper_bound_mean",
]

#: The share of the calibration split that fits the path; the rest tests it.
FIT_SHARE = 0.5
#: The default probability that a guarantee fails.
DEFAULT_DELTA = 0.1


@dataclass
class PathPoint:
    """One member of a path: what it stands for (``item``: an operating point), its cost,
    accuracy and disagreement with the full network on the fitting part, and per example of
    the testing part its loss (0/1 for accuracy and disagreement, MACs for a budget)."""

    item: Any
    fit_macs: float
    fit_accuracy: float
    losses: np.ndarray
    fit_disagreement: float = 0.0


def check_request(target: str, level: float, delta: float) -> None:
    if target not in TARGETS:
        raise DynrouteError(f"a guarantee's target is one of {', '.join(TARGETS)}")
    if not 0 < delta < 1:
        raise DynrouteError(f"`delta` must be in (0, 1), got {delta}")
    if target == "mean_macs":
        if not (math.isfinite(level) and level > 0):
            raise DynrouteError(f"`target_macs` must be a positive number of MACs, got {level}")
    elif not 0 < level < 1:
        name = "target_accuracy" if target == "accuracy" else "max_disagreement"
        raise DynrouteError(f"`{name}` must be in (0, 1), got {level}")


def certify(
    path: Sequence[PathPoint],
    target: str,
    level: float,
    delta: float,
    scale: float = 1.0,
    fit_examples: int = 0,
) -> tuple[PathPoint, Guarantee]:
    """Fixed-sequence testing along ``path`` (already in its fixed order); the chosen member
    and its guarantee, or a one-line ``DynrouteError`` naming the best guarantee the data
    allows and how many calibration examples the target would need. ``scale``: the largest
    loss (MACs of the dearest exit) for a budget."""
    check_request(target, level, delta)
    if not path:
        raise DynrouteError("there is no operating point to certify")
    n = len(path[0].losses)
    last: tuple[PathPoint, float] | None = None
    for point in path:
        p_value = _p_value(point, target, level, scale)
        if p_value > delta:
            break
        last = (point, p_value)
    if last is None:
        raise DynrouteError(_refusal(path[0], target, level, delta, scale, n, fit_examples))
    point, p_value = last
    bound = _bound(point, target, delta, scale)
    method = METHOD_BOUNDED if target == "mean_macs" else METHOD_BINARY
    return point, Guarantee(target, level, delta, method, n, fit_examples, bound, p_value)


def _p_value(point: PathPoint, target: str, level: float, scale: float) -> float:
    """The p-value of "this point misses the target on new data"."""
    n = len(point.losses)
    if target == "mean_macs":
        return bounded_p_value(float(point.losses.mean()) / scale, n, level / scale)
    risk = 1 - level if target == "accuracy" else level
    return binary_p_value(int(point.losses.sum()), n, risk)


def _bound(point: PathPoint, target: str, delta: float, scale: float) -> float:
    """The point's own (1 - delta) bound: on accuracy from below, on disagreement and mean
    MACs from above."""
    n = len(point.losses)
    if target == "mean_macs":
        return upper_bound_mean(float(point.losses.mean()) / scale, n, delta) * scale
    successes = n - int(point.losses.sum())
    bound = lower_bound(successes, n, delta)
    return bound if target == "accuracy" else 1 - bound


def _refusal(
    first: PathPoint,
    target: str,
    level: float,
    delta: float,
    scale: float,
    n: int,
    fit_examples: int,
) -> str:
    """Why nothing was certified: the best bound at hand, and the examples needed."""
    bound = _bound(first, target, delta, scale)
    observed = float(first.losses.mean())
    if target == "accuracy":
        best = f"accuracy >= {bound:.4f}"
        rate, risk = observed, 1 - level
    elif target == "disagreement":
        best = f"disagreement <= {bound:.4f}"
        rate, risk = observed, level
    else:
        best = f"mean MACs <= {bound / 1e6:.4g} M"
        rate, risk = observed / scale, level / scale
    needed = _examples_needed(rate, risk, delta, target == "mean_macs")
    total = None if needed is None else math.ceil(needed / (1 - FIT_SHARE))
    wanted = {
        "accuracy": f"accuracy >= {level:g}",
        "disagreement": f"disagreement <= {level:g}",
        "mean_macs": f"mean MACs <= {level / 1e6:.4g} M",
    }[target]
    more = (
        "no number of examples would do: even the calibration data miss it"
        if total is None
        else f"about {total} calibration examples would be needed (now {n + fit_examples})"
    )
    return (
        f"no operating point can guarantee {wanted} with probability {1 - delta:g} from this "
        f"calibration split: the best it guarantees is {best}; {more}"
    )


def _examples_needed(rate: float, risk: float, delta: float, bounded: bool) -> int | None:
    """The smallest test-part size at which the same observed rate would certify the risk
    level (None if the rate itself misses it)."""
    if rate >= risk:
        return None
    n = 16
    while n < 10**9:
        p_value = (
            bounded_p_value(rate, n, risk)
            if bounded
            else binary_p_value(math.floor(rate * n), n, risk)
        )
        if p_value <= 0.5 * delta:  # a margin: the observed rate itself is noisy
            break
        n *= 2
    low, high = n // 2, n
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        p_value = (
            bounded_p_value(rate, middle, risk)
            if bounded
            else binary_p_value(math.floor(rate * middle), middle, risk)
        )
        if p_value <= 0.5 * delta:
            high = middle
        else:
            low = middle
    return high


#: Path orders: ``fit`` (by what the fitting part measures of the target itself) and
#: ``cost`` (by MACs on the fitting part, dearest first; the order before format 3).
PATH_ORDERS = ("fit", "cost")


def order_path(points: Sequence[PathPoint], target: str, by: str = "fit") -> list[PathPoint]:
    """The fixed order a path is tested in, from what the fitting part says: for an
    accuracy target the most accurate first, for agreement the least disagreeing first
    (``by="cost"``: the dearest first), for a MAC budget the cheapest first."""
    if target == "mean_macs":
        return sorted(points, key=lambda p: (p.fit_macs, -p.fit_accuracy))
    if by == "cost":
        return sorted(points, key=lambda p: (-p.fit_macs, -p.fit_accuracy))
    if target == "disagreement":
        return sorted(points, key=lambda p: (p.fit_disagreement, -p.fit_macs))
    return sorted(points, key=lambda p: (-p.fit_accuracy, -p.fit_macs))


#: Resamples of the testing part behind the certification chance, and how many standard
#: errors below the best fitted accuracy a target may sit before it is flagged.
CERTIFICATION_DRAWS = 200
CEILING_ERRORS = 3.0


def certification(
    path: Sequence[PathPoint],
    target: str,
    level: float,
    delta: float,
    scale: float = 1.0,
    fit_examples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """How often fixed-sequence testing along ``path`` certifies a point when the testing
    part is resampled (with replacement), and whether the target sits within
    ``CEILING_ERRORS`` standard errors of the best accuracy the fitting part reaches (an
    accuracy target only): the two things a user needs beside the promise."""
    rng = np.random.default_rng(seed)
    n = len(path[0].losses) if path else 0
    certified = 0  # a sample certifies something exactly when the path's first point passes
    for _ in range(CERTIFICATION_DRAWS if n else 0):
        first = path[0]
        drawn = PathPoint(first.item, first.fit_macs, first.fit_accuracy,
                          first.losses[rng.integers(0, n, n)])  # fmt: skip
        certified += _p_value(drawn, target, level, scale) <= delta
    out: dict[str, Any] = {
        "chance": certified / CERTIFICATION_DRAWS if n else 0.0,
        "draws": CERTIFICATION_DRAWS,
    }
    if target == "accuracy" and path and fit_examples:
        best = max(p.fit_accuracy for p in path)
        error = math.sqrt(max(best * (1 - best), 1e-12) / fit_examples)
        out.update(
            best_fit_accuracy=best,
            standard_error=error,
            near_ceiling=level > best - CEILING_ERRORS * error,
        )
    return out


def split_for_guarantee(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The calibration split's examples that fit the path, and those that test it."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(FIT_SHARE * n))
    return np.sort(order[:cut]), np.sort(order[cut:])
