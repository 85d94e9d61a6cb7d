"""Routing policies by name: what decides, at each junction, where an example goes.

- ``learned``: the routers' argmax (the paper's inference policy, the default).
- ``confidence``: exit at the first exit on the path whose max softmax is >= ``threshold``.
- ``entropy``: exit at the first exit whose normalised entropy (entropy / log classes) is
  <= ``threshold``.
- ``budgeted``: MSDNet's budgeted scheme: confidence against a threshold of each exit's
  own (``thresholds``, one per leaf), chosen on held-out data so that the share of
  examples leaving at each exit follows a distribution fitted to a budget.
- ``ensemble``: each exit's answer is a learned combination of the exits the example has
  already passed and its own (a weighted geometric mean: ``weights`` over the path's exits
  and ``biases`` per class, one set per leaf, fitted on held-out data; Zero Time Waste);
  an example leaves at the first exit whose combined confidence is >= ``threshold``, or
  >= that exit's own entry of ``thresholds`` (the budgeted scheme on combined answers).
- ``oracle``: the cheapest exit that classifies the example correctly (the cheapest exit of
  all if none does). It needs labels: an upper bound on any router over these exits, never
  deployable.

A policy is plain data (no torch), so command-line parsers can list the policies and
calibrations store fitted ones as JSON; the decisions are ``dynroute.nn.routing``, the
fitting ``dynroute.infer.fitted_policies``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynroute.errors import DynrouteError

POLICIES = ("learned", "confidence", "entropy", "budgeted", "ensemble", "oracle")
#: Policies that decide by how certain the exits are (they evaluate the exit heads).
THRESHOLD_POLICIES = ("confidence", "entropy", "budgeted", "ensemble")
#: Policies with a single threshold of their own.
SINGLE_THRESHOLD = ("confidence", "entropy", "ensemble")
#: Policies whose parameters are fitted on held-out data (``dynroute calibrate`` fits them).
FITTED_POLICIES = ("budgeted", "ensemble")


def _numbers(values: Any, what: str) -> tuple[float, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise DynrouteError(f"`{what}` must be a list of numbers")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DynrouteError(f"`{what}` must hold numbers, got {value!r}")
        if not math.isfinite(value):
            raise DynrouteError(f"`{what}` must hold finite numbers, got {value!r}")
        out.append(float(value))
    return tuple(out)


@dataclass(frozen=True)
class Policy:
    """A routing policy and its parameters (see the module's docstring).

    ``thresholds`` (budgeted) and ``weights``/``biases`` (ensemble) hold one entry per leaf
    of the tree, in ``RoutedTree.leaves`` order.
    """

    name: str = "learned"
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    weights: tuple[tuple[float, ...], ...] | None = None
    biases: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise DynrouteError(f"`policy` must be one of {', '.join(POLICIES)}; got {self.name!r}")
        per_exit = self.name == "budgeted" or (
            self.name == "ensemble" and self.thresholds is not None
        )
        if self.name in SINGLE_THRESHOLD and not per_exit:
            if self.threshold is None:
                raise DynrouteError(f"the {self.name} policy needs a `threshold` (in [0, 1])")
            if isinstance(self.threshold, bool) or not (
                isinstance(self.threshold, (int, float)) and 0 <= self.threshold <= 1
            ):
                raise DynrouteError(f"`threshold` must be in [0, 1], got {self.threshold!r}")
        elif self.threshold is not None:
            what = "`thresholds` per exit" if per_exit else "no `threshold`"
            raise DynrouteError(f"the {self.name} policy takes {what}, not a `threshold`")
        if per_exit:
            if self.thresholds is None:
                raise DynrouteError(
                    "the budgeted policy needs `thresholds` (one per exit): fit them with "
                    "`calibrate` and a budget"
                )
            values = _numbers(self.thresholds, "thresholds")
            if any(not -1 <= v <= 2 for v in values):  # beyond [0, 1]: always / never exit
                raise DynrouteError(f"`thresholds` must lie in [-1, 2], got {values}")
            object.__setattr__(self, "thresholds", values)
        elif self.thresholds is not None:
            raise DynrouteError(f"the {self.name} policy takes no `thresholds`")
        if self.name == "ensemble":
            if self.weights is None or self.biases is None:
                raise DynrouteError(
                    "the ensemble policy needs `weights` and `biases` fitted on held-out "
                    "data: fit them with `calibrate`"
                )
            if len(self.weights) != len(self.biases):
                raise DynrouteError("the ensemble policy needs as many `weights` as `biases`")
            weights = tuple(_numbers(w, "weights") for w in self.weights)
            biases = tuple(_numbers(b, "biases") for b in self.biases)
            object.__setattr__(self, "weights", weights)
            object.__setattr__(self, "biases", biases)
        elif self.weights is not None or self.biases is not None:
            raise DynrouteError(f"the {self.name} policy takes no `weights` or `biases`")

    @property
    def uses_threshold(self) -> bool:
        """Whether the policy decides by the exits' certainty (evaluating their heads)."""
        return self.name in THRESHOLD_POLICIES

    @property
    def deployable(self) -> bool:
        return self.name != "oracle"

    @property
    def cost_model(self) -> str:
        """Which accounting of ``TreeCosts.policy_path_macs`` applies."""
        if self.name == "ensemble":
            return "ensemble"
        return "threshold" if self.uses_threshold else self.name

    def check_tree(self, leaves: int, classes: int) -> None:
        """Refuse parameters fitted for another tree (other exits or classes)."""
        for what, values in (("thresholds", self.thresholds), ("weights", self.weights)):
            if values is not None and len(values) != leaves:
                raise DynrouteError(
                    f"the {self.name} policy has {len(values)} `{what}` for a tree of "
                    f"{leaves} exits: it was fitted on another network"
                )
        if self.biases is not None and any(len(b) != classes for b in self.biases):
            raise DynrouteError(
                f"the ensemble policy's `biases` are not for {classes} classes: it was "
                "fitted on another network"
            )

    def label(self) -> str:
        if self.threshold is not None:
            return f"{self.name} {self.threshold:g}"
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``Policy.from_dict`` reads it back."""
        data: dict[str, Any] = {"name": self.name, "threshold": self.threshold}
        if self.thresholds is not None:
            data["thresholds"] = list(self.thresholds)
        if self.weights is not None:
            data["weights"] = [list(w) for w in self.weights]
            data["biases"] = [list(b) for b in self.biases or ()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        if not isinstance(data, dict):
            raise DynrouteError("a policy must be a JSON object")
        unknown = sorted(set(data) - {"name", "threshold", "thresholds", "weights", "biases"})
        if unknown:
            raise DynrouteError(f"unknown policy fields: {', '.join(unknown)}")
        return cls(**data)


LEARNED = Policy()
