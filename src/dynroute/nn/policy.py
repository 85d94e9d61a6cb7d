"""Routing policies by name: what decides, at each junction, where an example goes.

- ``learned``: the routers' argmax (the paper's inference policy, the default).
- ``confidence``: exit at the first exit on the path whose max softmax is >= threshold.
- ``entropy``: exit at the first exit whose normalised entropy (entropy / log classes) is
  <= threshold.
- ``oracle``: the cheapest exit that classifies the example correctly (the cheapest exit of
  all if none does). It needs labels: an upper bound on any router over these exits, never
  deployable.

This module is plain data (no torch), so command-line parsers can list the policies; the
decisions themselves are ``dynroute.nn.routing``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynroute.errors import DynrouteError

POLICIES = ("learned", "confidence", "entropy", "oracle")
THRESHOLD_POLICIES = ("confidence", "entropy")


@dataclass(frozen=True)
class Policy:
    """A routing policy and, for threshold policies, its threshold in [0, 1]."""

    name: str = "learned"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise DynrouteError(f"`policy` must be one of {', '.join(POLICIES)}; got {self.name!r}")
        if self.name in THRESHOLD_POLICIES:
            if self.threshold is None:
                raise DynrouteError(f"the {self.name} policy needs a `threshold` (in [0, 1])")
            if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1):
                raise DynrouteError(f"`threshold` must be in [0, 1], got {self.threshold!r}")
        elif self.threshold is not None:
            raise DynrouteError(f"the {self.name} policy takes no `threshold`")

    @property
    def uses_threshold(self) -> bool:
        return self.name in THRESHOLD_POLICIES

    @property
    def deployable(self) -> bool:
        return self.name != "oracle"

    @property
    def cost_model(self) -> str:
        """Which accounting of ``TreeCosts.policy_path_macs`` applies."""
        return "threshold" if self.uses_threshold else self.name

    def label(self) -> str:
        return f"{self.name} {self.threshold:g}" if self.uses_threshold else self.name

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "threshold": self.threshold}


LEARNED = Policy()
