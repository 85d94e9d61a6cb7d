"""Range checks of the options several surfaces take, each defined once.

The library calls them on its arguments and the command line's argument types wrap the
same functions (``dynroute.commands.common``), so ``evaluate``, ``calibrate``, ``export``,
``predict`` and ``serve`` refuse a bad value with one message. Torch-free: the export
runtime checks its options here too.
"""

from __future__ import annotations

import math
from typing import Any

from dynroute.errors import DynrouteError


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any, what: str) -> float:
    """A finite number (no NaN, no infinity)."""
    if not _number(value) or not math.isfinite(value):
        raise DynrouteError(f"`{what}` must be a finite number, got {value!r}")
    return float(value)


def target_macs(value: Any) -> float | None:
    """A mean-MAC budget: a positive, finite number of MACs (None: no budget)."""
    if value is None:
        return None
    if not _number(value) or not 0 < value < math.inf:
        raise DynrouteError(
            f"`target_macs` must be a positive, finite number of MACs, got {value!r}"
        )
    return float(value)


def k_cpt(value: Any) -> float | None:
    """A k_cpt input: the price of one MAC, a finite number in [0, 1] (None: none given)."""
    if value is None:
        return None
    if not _number(value) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DynrouteError(f"`k_cpt` must be a finite number in [0, 1], got {value!r}")
    return float(value)


def unit_interval(value: Any, what: str) -> float:
    """A share or an accuracy in [0, 1]."""
    if not _number(value) or not math.isfinite(value) or not 0 <= value <= 1:
        raise DynrouteError(f"`{what}` must be a number in [0, 1], got {value!r}")
    return float(value)
