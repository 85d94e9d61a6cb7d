"""Targets with a guarantee: operating points whose accuracy, agreement or cost holds on
new data with probability at least 1 - delta over the calibration sample.

The method is Learn-then-Test (Angelopoulos et al. 2021) with fixed-sequence testing:

1. the calibration split is cut in two at random; on the first part (``fit``) every
   parameter is fitted (recalibrated or combined answers, the scheduler's models, the
   budgeted scheme's per-exit thresholds) and every family of operating points is built;
   the family that meets the target most cheaply there is kept, and its members ordered
   by their cost there: a path fixed before the second part is looked at;
2. on the second part (``test``), each member along the path is tested in turn, the null
   hypothesis being that it misses the target on new data; it is rejected when its
   p-value is at most delta, and the walk stops at the first member that is not;
3. every member rejected before the stop meets the target, all of them at once, with
   probability at least 1 - delta; the cheapest of them is chosen (for a MAC budget: the
   dearest, the most accurate one it affords).

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

from dynroute.errors import DynrouteError
from dynroute.guarantee import TARGETS, Guarantee

#: The share of the calibration split that fits the path; the rest tests it.
FIT_SHARE = 0.5
#: The default probability that a guarantee fails.
DEFAULT_DELTA = 0.1
METHOD_BINARY = (
    "Learn-then-Test, fixed-sequence testing along a cost-ordered path fitted on half the "
    "calibration split; exact binomial tail p-values on the other half"
)
METHOD_BOUNDED = (
    "Learn-then-Test, fixed-sequence testing along a cost-ordered path fitted on half the "
    "calibration split; Hoeffding-Bentkus p-values on the other half"
)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space (exact for the sizes used here)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    i = np.arange(k + 1, dtype=np.float64)
    choose = np.concatenate([[0.0], np.cumsum(np.log(n - i[1:] + 1) - np.log(i[1:]))])
    logs = choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def binary_p_value(failures: int, n: int, level: float) -> float:
    """p-value of "the failure rate exceeds ``level``" after ``failures`` in ``n``."""
    if n == 0:
        return 1.0
    return binomial_cdf(failures, n, level)


def _kl(a: float, b: float) -> float:
    """Bernoulli relative entropy h(a, b) (0 log 0 = 0)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def bounded_p_value(mean: float, n: int, level: float) -> float:
    """Hoeffding-Bentkus p-value of "the mean of a [0, 1] variable exceeds ``level``"
    given a sample mean ``mean`` of ``n`` draws."""
    if n == 0 or level >= 1:
        return 1.0
    if level <= 0:
        return 1.0 if mean > 0 else 0.0
    hoeffding = math.exp(-n * _kl(min(mean, level), level))
    bentkus = math.e * binomial_cdf(math.ceil(n * mean), n, level)
    return min(1.0, hoeffding, bentkus)


def lower_bound(successes: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) Clopper-Pearson lower bound of a success rate."""
    if n == 0 or successes == 0:
        return 0.0
    low, high = 0.0, successes / n
    for _ in range(60):  # P(Binomial(n, 1 - q) <= n - successes) is rising in q
        middle = (low + high) / 2
        if binary_p_value(n - successes, n, 1 - middle) <= delta:
            low = middle
        else:
            high = middle
    return low


def upper_bound_mean(mean: float, n: int, delta: float) -> float:
    """(1 - delta) Hoeffding-Bentkus upper bound of a [0, 1] mean."""
    low, high = mean, 1.0
    if bounded_p_value(mean, n, high - 1e-12) > delta:
        return 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if bounded_p_value(mean, n, middle) <= delta:
            high = middle
        else:
            low = middle
    return high


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


def order_path(points: Sequence[PathPoint], target: str) -> list[PathPoint]:
    """The fixed order a path is tested in, from what the fitting part says: from the dearest
    (likeliest to meet an accuracy or agreement target) down, or from the cheapest (likeliest
    to meet a MAC budget) up."""
    if target == "mean_macs":
        return sorted(points, key=lambda p: (p.fit_macs, -p.fit_accuracy))
    return sorted(points, key=lambda p: (-p.fit_macs, -p.fit_accuracy))


def split_for_guarantee(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The calibration split's examples that fit the path, and those that test it."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(FIT_SHARE * n))
    return np.sort(order[:cut]), np.sort(order[cut:])
