"""Range checks of every number dynroute takes, defined once.

The library calls them on its arguments, the command line's argument types wrap the same
functions (``dynroute.commands.common.ranged``), training options carry ``Bounds``
(``dynroute.train.config``), and manifests, policies and calibrations are read through
them: so every surface refuses a bad value with the same one-line message, which names the
option, its range and why the range is what it is. Torch-free: the export runtime checks
its numbers here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynroute.core.errors import DynrouteError

#: The most multiply-accumulates anything may cost per example (a path, a budget): far
#: beyond any network, and still exact as a float.
MAX_MACS = 10**15


def is_number(value: Any) -> bool:
    """An int or float, not a bool (JSON ``true`` is no number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """An int, not a bool (``1.0`` is refused where a count is meant)."""
    return isinstance(value, int) and not isinstance(value, bool)


def finite_numbers(values: Any, what: str) -> tuple[float, ...]:
    """A list of finite numbers (per-exit thresholds, weights, biases) as a tuple."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise DynrouteError(f"`{what}` must be a list of numbers")
    out = []
    for value in values:
        if not is_number(value):
            raise DynrouteError(f"`{what}` must hold numbers, got {value!r}")
        if not math.isfinite(value):
            raise DynrouteError(f"`{what}` must hold finite numbers, got {value!r}")
        out.append(float(value))
    return tuple(out)


def finite(value: Any, what: str) -> float:
    """A finite number (no NaN, no infinity)."""
    if not is_finite_number(value):
        raise DynrouteError(
            f"`{what}` must be a finite number, got {value!r}: NaN and infinity compare with "
            "nothing"
        )
    return float(value)


def target_macs(value: Any, required: bool = False) -> float | None:
    """A mean-MAC budget: a positive number of MACs up to ``MAX_MACS`` (None: no budget,
    unless one is ``required``). The export runtime, the budget hold, the resolver and the
    command line all check a budget here."""
    if value is None and not required:
        return None
    if not is_number(value) or not 0 < value <= MAX_MACS:
        raise DynrouteError(
            f"`target_macs` must be a positive number of MACs up to {MAX_MACS:.0e}, got "
            f"{value!r}: a mean cost per example, and no network costs more"
        )
    return float(value)


def k_cpt(value: Any) -> float | None:
    """A k_cpt input: the price of one MAC, a finite number in [0, 1] (None: none given)."""
    if value is None:
        return None
    if not is_finite_number(value) or not 0 <= value <= 1:
        raise DynrouteError(
            f"`k_cpt` must be a finite number in [0, 1], got {value!r}: the price of one MAC "
            "in units of the loss"
        )
    return float(value)


def unit_interval(value: Any, what: str) -> float:
    """A share or an accuracy in [0, 1]."""
    if not is_finite_number(value) or not 0 <= value <= 1:
        raise DynrouteError(f"`{what}` must be a number in [0, 1], got {value!r}: a share")
    return float(value)


@dataclass(frozen=True)
class Bounds:
    """The valid range of a numeric option (every bound optional, each open or closed)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool = False) -> str:
        """E.g. 'a finite number > 0', 'an integer >= 1 and <= 16'."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_shown(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_shown(self.high)}")
        return " ".join(["an integer" if integer else "a finite number", " and ".join(parts)])

    def describe_range(self) -> str:
        """The range alone, for help texts: '>= 0 and < 1'."""
        return self.describe().removeprefix("a finite number ")


def _shown(bound: float) -> str:
    """A bound as written: a whole number in full (a seed's 9223372036854775807, not
    9.22337e+18), any other with ``:g``."""
    if isinstance(bound, int) or (bound.is_integer() and abs(bound) < 1e16):
        return str(int(bound))
    return f"{bound:g}"


NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)


@dataclass(frozen=True)
class Range:
    """An option's valid values: its ``bounds``, whether it counts (``integer``) and
    ``why`` the bounds are where they are, said in every refusal."""

    bounds: Bounds
    integer: bool = False
    why: str = ""

    def check(self, value: Any, what: str) -> Any:
        """``value`` if it is in range; else a ``DynrouteError`` naming ``what``."""
        if not (is_integer(value) if self.integer else is_number(value)) or not (
            self.bounds.contains(value)
        ):
            raise DynrouteError(f"`{what}` {self.refusal(value)}")
        return value

    def refusal(self, value: Any) -> str:
        """'must be an integer >= 1 and <= 64, got 100000: why'."""
        because = f": {self.why}" if self.why else ""
        return f"must be {self.bounds.describe(self.integer)}, got {value!r}{because}"


def in_range(value: Any, what: str, allowed: Range) -> Any:
    """``value`` checked against ``allowed``; the library's form of the command line's
    ``ranged`` argument type (one message for both)."""
    return allowed.check(value, what)


# The ranges of the options several surfaces take; a command's own option may define its
# own ``Range`` beside it, but checks it with ``in_range`` or ``ranged`` all the same.
THREADS = Range(
    Bounds(1, 4096), True, "threads beyond the machine's cores only wait for one another"
)
READERS = Range(
    Bounds(1, 64), True, "each reader decodes files ahead into memory; more only hold more images"
)
BATCH_SIZE = Range(
    Bounds(1, 4096), True, "a batch is decoded and run at once; a larger one only holds more memory"
)
WORKERS = Range(
    Bounds(1, 256), True, "each worker is a process with its own copy of the data and network"
)
PORT = Range(Bounds(0, 65535), True, "a TCP port (0 picks a free one)")
SECONDS = Range(Bounds(0, 86_400, low_open=True), False, "a duration of up to a day")
MEGABYTES = Range(
    Bounds(0, 4096, low_open=True), False, "memory held per request or in all, up to 4 GiB"
)
CHECK_INPUTS = Range(
    Bounds(0, 65_536), True, "random inputs traced through both networks (0: skip the check)"
)
DELTA = Range(
    Bounds(0, 1, low_open=True, high_open=True),
    False,
    "the chance that a guarantee fails: at 0 nothing is ever certified, at 1 it promises nothing",
)
TARGET_ACCURACY = Range(
    Bounds(0, 1, low_open=True), False, "an accuracy: a share of examples answered right"
)
GUARANTEED_ACCURACY = Range(
    Bounds(0, 1, low_open=True, high_open=True),
    False,
    "an accuracy a guarantee can certify: no number of examples certifies 1",
)
MAX_DISAGREEMENT = Range(
    Bounds(0, 1, low_open=True, high_open=True),
    False,
    "a share of inputs; 0 needs the full network, 1 promises nothing",
)
PARTITIONS = Range(
    Bounds(1, 100_000), True, "random calibration draws; each one calibrates and measures anew"
)
CALIBRATION_SIZE = Range(
    Bounds(2, 10**7), True, "calibration examples: one half fits a path, the other tests it"
)
#: The most values a list option takes (budgets of a policy table, targets of a study).
MAX_LIST = 64
