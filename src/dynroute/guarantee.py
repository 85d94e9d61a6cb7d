"""A guarantee as plain data: what an operating point is certified to do on new data.

``dynroute calibrate --delta`` certifies it (``dynroute.policies.guarantees``), a run's
calibration and an export carry it, and ``predict`` and ``serve`` report it. Torch-free, so
the export runtime checks a manifest's guarantee on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dynroute.errors import DynrouteError

TARGETS = ("accuracy", "disagreement", "mean_macs")


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
        """The guarantee in words."""
        chance = f"with probability at least {1 - self.delta:g} over the calibration sample"
        if self.target == "accuracy":
            return f"accuracy >= {self.level:g} on new data like the calibration split, {chance}"
        if self.target == "disagreement":
            return (
                f"disagrees with the full network on at most {self.level:g} of new inputs like "
                f"the calibration split, {chance}"
            )
        return (
            f"at most {self.level / 1e6:.4g} M MACs per input on average on new data like the "
            f"calibration split, {chance}"
        )

    @classmethod
    def from_dict(cls, data: Any) -> Guarantee:
        """A guarantee from ``to_dict``'s data, checked: a refusal names what is wrong."""
        if not isinstance(data, dict):
            raise DynrouteError("a guarantee must be an object")
        try:
            out = cls(
                str(data["target"]),
                float(data["level"]),
                float(data["delta"]),
                str(data["method"]),
                int(data["n"]),
                int(data.get("fit_examples", 0)),
                float(data["bound"]),
                float(data["p_value"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DynrouteError(f"a malformed guarantee ({exc})") from None
        numbers = (out.level, out.delta, out.bound, out.p_value)
        if out.target not in TARGETS or not all(math.isfinite(v) for v in numbers):
            raise DynrouteError(f"a guarantee of unknown target {out.target!r} or bad numbers")
        if not 0 < out.delta < 1 or out.n < 1 or not 0 <= out.p_value <= out.delta:
            raise DynrouteError("a guarantee's delta, n or p-value is out of range")
        holds = {
            "accuracy": out.bound >= out.level - 1e-12,
            "disagreement": out.bound <= out.level + 1e-12,
            "mean_macs": out.bound <= out.level * (1 + 1e-12),
        }[out.target]
        if not holds:
            raise DynrouteError("a guarantee whose bound does not meet its target")
        return out
