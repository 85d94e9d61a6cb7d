"""What a user asks an operating point to be: one request, checked once, resolved alike for a
run and an export.

Every verb that runs a network (``evaluate``, ``export``, ``predict``, ``serve``,
``EarlyExitEngine.from_run``, ``dynroute.deploy.load``) takes the same five options: a
policy name, its answers, a threshold, a mean-MAC budget and a k_cpt input. They become an
``OperatingRequest`` here (the command line parses them once, ``from_options``); a run
resolves it in ``dynroute.policies.resolve``, an export in ``ExportedModel.resolve``, and
both describe a point chosen for a budget with ``chosen_for_budget``. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import ANSWERS, Policy, override_policy, policy_names

#: The policy name that means "every policy, chosen for the budget".
BEST = "best"
#: The answers name that means "every kind, chosen for the budget".
ANY = "any"


@dataclass(frozen=True)
class OperatingRequest:
    """The operating-point options as given (None: not given). ``target_macs`` is in MACs."""

    policy: str | None = None
    threshold: float | None = None
    target_macs: float | None = None
    k_cpt: float | None = None
    answers: str | None = None

    def __post_init__(self) -> None:
        checks.target_macs(self.target_macs)
        checks.k_cpt(self.k_cpt)
        if self.threshold is not None and not checks.is_finite_number(self.threshold):
            raise DynrouteError(f"`threshold` must be a finite number, got {self.threshold!r}")
        names = (*policy_names(), BEST)
        if self.policy is not None and self.policy not in names:
            raise DynrouteError(f"`policy` must be one of {', '.join(names)}; got {self.policy!r}")
        if self.answers is not None and self.answers not in (*ANSWERS, ANY):
            raise DynrouteError(
                f"`answers` must be one of {', '.join((*ANSWERS, ANY))}; got {self.answers!r}"
            )
        if self.threshold is not None and self.target_macs is not None:
            raise DynrouteError("give `threshold` or `target_macs`, not both")
        if self.target_macs is None and self.policy == BEST:
            raise DynrouteError("the best policy is chosen for a budget: give `target_macs`")

    @classmethod
    def from_options(cls, options: Any) -> OperatingRequest:
        """From parsed command-line options (``dynroute.commands.common.
        add_operating_point_arguments``; absent ones count as not given)."""
        return cls(**{name: getattr(options, name, None) for name in cls.__dataclass_fields__})

    def options(self) -> dict[str, Any]:
        """As keyword arguments (``evaluate``'s, ``export_run``'s, ``open_predictor``'s)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def applied_to(self, current: Policy) -> Policy:
        """``current`` with the policy name, threshold and answers asked (no budget)."""
        return override_policy(current, self.policy, self.threshold, self.answers)


def chosen_for_budget(target_macs: float, point: Any, where: str = "the validation split") -> str:
    """How a point chosen for a budget is described: the budget and what it measured."""
    label = point.policy.label() + " " if isinstance(getattr(point, "policy", None), Policy) else ""
    return (
        f"{label}chosen for {target_macs / 1e6:g} M MACs on {where} "
        f"(accuracy {point.accuracy:.4f} at {point.mean_macs / 1e6:.3f} M there)"
    )
