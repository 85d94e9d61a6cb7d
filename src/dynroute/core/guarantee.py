"""A guarantee as plain data: what an operating point is certified to do on new data.

``dynroute calibrate --delta`` certifies it (``dynroute.policies.guarantees``), a run's
calibration and an export carry it, and ``predict`` and ``serve`` report it. A guarantee
read from a file is checked, never trusted: its types and ranges, its bound against the
binomial tail that n examples allow (the bound and the p-value of a 0/1 target are
recomputed from each other), its MACs against the exits' costs, and the operating point it
certifies; its promise is written by ``Guarantee.promise`` from the checked numbers, never
taken from the file. Torch-free (NumPy only), so the export runtime checks a manifest's
guarantee on load; the finite-sample tails live here for the same reason.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynroute.core.checks import MAX_MACS, is_finite_number, is_integer, k_cpt
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy

TARGETS = ("accuracy", "disagreement", "mean_macs")
METHOD_BINARY = (
    "Learn-then-Test, fixed-sequence testing along a path ordered on half the calibration "
    "split (most accurate there first); exact binomial tail p-values on the other half"
)
METHOD_BOUNDED = (
    "Learn-then-Test, fixed-sequence testing along a path ordered on half the calibration "
    "split (cheapest there first); Hoeffding-Bentkus p-values on the other half"
)

#: The most calibration examples a guarantee may rest on: more than any split dynroute
#: builds, and few enough that re-checking the bound stays quick.
MAX_EXAMPLES = 10**6
#: How far a recomputed bound or p-value may stray from the file's (float rounding).
TOLERANCE = 1e-9
#: What reading hand-edited data of the wrong shape raises before a check can name it.
MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError)


def read_policy(data: Any) -> Policy:
    """``Policy.from_dict`` on data read from a file (a manifest, a calibration, a
    guarantee): a value of the wrong shape (a list for a name, a number for a list) is a
    one-line refusal, never a traceback."""
    try:
        return Policy.from_dict(data)
    except MALFORMED as exc:
        raise DynrouteError(f"a malformed policy ({exc})") from None


# ------------------------------------------------------------------ finite-sample tails
def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space. Terms more than 50 standard deviations
    below the mode (or below k) are under 1e-500 of the largest and are left out, so a
    test part of a billion examples costs a window of terms, not a billion."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    spread = 50 * math.sqrt(n * p * (1 - p)) + 50
    start = max(0, int(min(k, n * p) - spread))
    i = np.arange(start, k + 1, dtype=np.float64)
    first = math.lgamma(n + 1) - math.lgamma(start + 1) - math.lgamma(n - start + 1)
    steps = np.log(n - i[1:] + 1) - np.log(i[1:])
    choose = first + np.concatenate([[0.0], np.cumsum(steps)])
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


@functools.lru_cache(maxsize=65536)
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


def failures_behind(rate_bound: float, n: int, delta: float) -> int | None:
    """How many failures in ``n`` give ``rate_bound`` as the (1 - delta) Clopper-Pearson
    lower bound of the success rate (``lower_bound``), or None if no count does: a bound
    that ``n`` examples cannot produce."""
    if rate_bound <= 0:
        return n  # no success at all: the bound is 0
    if rate_bound > 1:
        return None

    def tail(failures: int, rate: float) -> float:
        return binary_p_value(failures, n, 1 - rate)

    # The bound for f failures is where tail(f, q) crosses delta; tail rises with f.
    low, high = -1, n - 1  # the largest f with tail(f, bound) <= delta
    while low < high:
        middle = (low + high + 1) // 2
        if tail(middle, rate_bound) <= delta * (1 + TOLERANCE):
            low = middle
        else:
            high = middle - 1
    if low < 0 or tail(low, min(1.0, rate_bound + TOLERANCE)) <= delta:
        return None  # the crossing for that count lies elsewhere: not its bound
    return low


# ------------------------------------------------------------------ the guarantee
@dataclass
class Guarantee:
    """What a chosen operating point is certified to do on new data, and how."""

    target: str
    level: float
    delta: float
    method: str
    n: int
    fit_examples: int
    bound: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "level": self.level,
            "delta": self.delta,
            "method": self.method,
            "n": self.n,
            "fit_examples": self.fit_examples,
            "bound": self.bound,
            "p_value": self.p_value,
            "promise": self.promise(),
        }

    def promise(self) -> str:
        """The guarantee in words, saying what is bounded: the chance that calibrating on a
        random sample certifies a point that misses the target, not the chance that the
        point in hand misses (near a network's ceiling that is much larger: a certificate
        there is a lucky draw)."""
        if self.target == "accuracy":
            what = f"accuracy >= {self.level:g}"
        elif self.target == "disagreement":
            what = f"disagreeing with the full network on at most {self.level:g} of inputs"
        else:
            what = f"at most {self.level / 1e6:.4g} M MACs per input on average"
        return (
            f"{what} on new data like the calibration split; what is bounded: over random "
            f"calibration samples, the chance that this procedure certifies a point that "
            f"misses it is at most {self.delta:g}"
        )

    @classmethod
    def from_dict(cls, data: Any) -> Guarantee:
        """A guarantee from ``to_dict``'s data, checked (see the module's docstring): a
        refusal names what is wrong. The method is the one dynroute certifies its target
        with, whatever the file says; ``promise`` is ignored (``promise`` writes it)."""
        if not isinstance(data, dict):
            raise DynrouteError("a guarantee must be an object")
        for key in ("target", "level", "delta", "method", "n", "bound", "p_value"):
            if key not in data:
                raise DynrouteError(f"a guarantee needs `{key}`")
        target = data["target"]
        if target not in TARGETS:
            raise DynrouteError(f"a guarantee's target is one of {', '.join(TARGETS)}, "
                                f"not {target!r}")  # fmt: skip
        if not isinstance(data["method"], str):
            raise DynrouteError("a guarantee's `method` must be text")
        for key in ("level", "delta", "bound", "p_value"):
            if not is_finite_number(data[key]):
                raise DynrouteError(f"a guarantee's `{key}` must be a number, got {data[key]!r}")
        for key in ("n", "fit_examples"):
            value = data.get(key, 0)
            low = 1 if key == "n" else 0
            if not is_integer(value) or not low <= value <= MAX_EXAMPLES:
                raise DynrouteError(
                    f"a guarantee's `{key}` must be a count of examples in "
                    f"{low}..{MAX_EXAMPLES}, got {value!r}"
                )
        out = cls(
            target,
            float(data["level"]),
            float(data["delta"]),
            METHOD_BOUNDED if target == "mean_macs" else METHOD_BINARY,
            data["n"],
            data.get("fit_examples", 0),
            float(data["bound"]),
            float(data["p_value"]),
        )
        out._check()
        return out

    def _check(self) -> None:
        """Ranges, the bound against the target, and the bound and p-value against n."""
        if not 0 < self.delta < 1:
            raise DynrouteError(f"a guarantee's `delta` must be in (0, 1), got {self.delta}")
        if not 0 <= self.p_value <= self.delta:
            raise DynrouteError(
                f"a guarantee's p-value {self.p_value} is not significant at its delta "
                f"{self.delta}: nothing was certified"
            )
        if self.target == "mean_macs":
            if not 0 < self.level <= MAX_MACS or self.bound < 0:
                raise DynrouteError(
                    f"a guarantee of mean MACs needs a level in (0, {MAX_MACS:.0e}] and a bound "
                    f">= 0, got {self.level} and {self.bound}"
                )
            if self.bound > self.level * (1 + 1e-12):
                raise DynrouteError("a guarantee whose bound does not meet its target")
            return
        if not 0 < self.level < 1 or not 0 <= self.bound <= 1:
            raise DynrouteError(
                f"a guarantee of {self.target} needs a level in (0, 1) and a bound in [0, 1], "
                f"got {self.level} and {self.bound}"
            )
        accuracy = self.target == "accuracy"
        holds = self.bound >= self.level - 1e-12 if accuracy else self.bound <= self.level + 1e-12
        if not holds:
            raise DynrouteError("a guarantee whose bound does not meet its target")
        # Recompute: the failures behind the bound, then the p-value they give.
        failures = failures_behind(self.bound if accuracy else 1 - self.bound, self.n, self.delta)
        risk = 1 - self.level if accuracy else self.level
        p_value = None if failures is None else binary_p_value(failures, self.n, risk)
        if p_value is None or abs(p_value - self.p_value) > TOLERANCE + 1e-6 * p_value:
            raise DynrouteError(
                f"a guarantee whose bound {self.bound:.6g} and p-value {self.p_value:.6g} are "
                f"not what n = {self.n} examples give at delta {self.delta:g}"
            )

    def check_costs(self, cheapest: float) -> None:
        """Refuse a MAC guarantee below what the cheapest exit of its policy costs (no mean
        of per-example costs can be lower)."""
        if self.target == "mean_macs" and self.bound < cheapest * (1 - 1e-9):
            raise DynrouteError(
                f"a guarantee of at most {self.bound / 1e6:.4g} M mean MACs, less than the "
                f"cheapest exit costs ({cheapest / 1e6:.4g} M)"
            )


def certified(
    data: Any, policy: Policy, k_cpt_input: float | None, cheapest: float | None = None
) -> dict[str, Any]:
    """A guarantee read from a file (a manifest, a calibration), checked and certifying
    exactly ``policy`` at ``k_cpt_input`` (and, given the ``cheapest`` exit's MACs under
    it, ``Guarantee.check_costs``): its numbers, the operating point and the procedure's
    certification statistics, with the promise and method written anew."""
    checked = Guarantee.from_dict(data)
    if cheapest is not None:
        checked.check_costs(cheapest)
    point = data.get("policy")
    if not isinstance(point, dict) or read_policy(point) != policy:
        raise DynrouteError("it certifies another policy than the one it comes with")
    if point.get("scheduler") != policy.scheduler or data.get("k_cpt") != k_cpt_input:
        raise DynrouteError("it certifies another operating point than the one it comes with")
    out = {"policy": policy.to_dict(), "k_cpt": k_cpt(data.get("k_cpt")), **checked.to_dict()}
    statistics = data.get("certification")
    if statistics is not None:
        if (
            not isinstance(statistics, dict)
            or len(statistics) > 16
            or not all(
                isinstance(key, str) and (isinstance(v, bool) or is_finite_number(v))
                for key, v in statistics.items()
            )
        ):
            raise DynrouteError("its `certification` must map names to numbers")
        out["certification"] = dict(statistics)
    return out
