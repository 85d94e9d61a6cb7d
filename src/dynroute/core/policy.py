"""Routing policies as plain data: what decides, at each junction, where an example goes.

A policy is two choices and their parameters:

- its **answers**, what each exit says: ``raw`` (the exit's own logits), ``calibrated``
  (each exit's log-softmax scaled and shifted by a bias per class: temperature scaling
  with a class prior, fitted on held-out data) or ``combined`` (each exit's answer is a
  weighted geometric mean of its own softmax and those of the exits the example already
  passed, plus a bias per class: a running ensemble, as in Zero Time Waste);
- its **rule**, how the answers decide: one of ``dynroute.core.rules.RULES`` (one file each):
  the paper's learned routers, a threshold on the answers' confidence or entropy,
  MSDNet's per-exit thresholds, the learned scheduler, or the oracle (a bound, never
  deployed). The routers decide without reading the answers; the exit they choose still
  answers as the policy says.

Only ``learned`` and ``scheduler`` make *learned* per-example decisions; the others are
fixed rules on (possibly recalibrated or combined) answers. The old name ``ensemble``
still reads: it is ``confidence`` (or ``budgeted``) on ``combined`` answers.

This module is torch-free, so the command line, calibration files and exports share it;
``dynroute.core.decisions`` carries the rules out (in NumPy) for the engine, the export runtime
and the policy tables alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dynroute.core.checks import finite_numbers, is_finite_number
from dynroute.core.errors import DynrouteError
from dynroute.core.rules import RULES, ExitRule

#: Every rule's name, live: a rule registered later (``dynroute.core.rules``) is listed too.
POLICIES = RULES.keys()
ANSWERS = ("raw", "calibrated", "combined")
#: Old names that still read: name -> (rule, answers).
ALIASES = {"ensemble": ("confidence", "combined")}


def policy_names() -> tuple[str, ...]:
    """Every name a policy can be given: each registered rule and the old aliases."""
    return (*RULES, *ALIASES)


#: Fitted answers already checked, by the id of their weights (kept alive here, so an id
#: is never reused while listed): a family of thousands of thresholds on the same answers
#: checks their numbers once, not once per threshold.
_CHECKED_ANSWERS: dict[int, tuple[Any, Any]] = {}


@dataclass(frozen=True)
class Policy:
    """A rule, the answers it reads and their parameters (see the module's docstring).

    ``thresholds`` (budgeted), ``weights``/``biases`` (calibrated or combined answers) and
    ``scheduler["exits"]`` hold one entry per exit of the tree, in leaf order. An exit's
    ``weights`` are over the exits it passed (path order) and itself; calibrated answers
    weigh only the exit itself.
    """

    name: str = "learned"
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    answers: str = "raw"
    weights: tuple[tuple[float, ...], ...] | None = None
    biases: tuple[tuple[float, ...], ...] | None = None
    scheduler: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        rule = RULES.get(self.name) if isinstance(self.name, str) else None
        if rule is None:
            raise DynrouteError(
                f"`policy` must be one of {', '.join(policy_names())}; got {self.name!r}"
            )
        if self.answers not in ANSWERS:
            raise DynrouteError(
                f"`answers` must be one of {', '.join(ANSWERS)}; got {self.answers!r}"
            )
        self._check_thresholds(rule)
        self._check_answers(rule)
        rule.check(self)

    def _check_thresholds(self, rule: ExitRule) -> None:
        if rule.parameter in ("threshold", "scheduler"):
            value = self.threshold
            if rule.bounded and not (is_finite_number(value) and 0 <= value <= 1):
                raise DynrouteError(
                    f"the {self.name} policy needs a `threshold` in [0, 1], got {value!r}"
                )
            if not rule.bounded and not is_finite_number(value):
                raise DynrouteError(
                    f"the {self.name} policy needs a finite `threshold`, got {value!r}"
                )
        elif self.threshold is not None:
            what = "`thresholds` per exit" if rule.parameter == "thresholds" else "no `threshold`"
            raise DynrouteError(f"the {self.name} policy takes {what}, not a `threshold`")
        if rule.parameter == "thresholds":
            if self.thresholds is None:
                raise DynrouteError(
                    f"the {self.name} policy needs `thresholds` (one per exit): fit them with "
                    "`calibrate` and a budget"
                )
            values = finite_numbers(self.thresholds, "thresholds")
            if any(not -1 <= v <= 2 for v in values):  # beyond [0, 1]: always / never exit
                raise DynrouteError(f"`thresholds` must lie in [-1, 2], got {values}")
            object.__setattr__(self, "thresholds", values)
        elif self.thresholds is not None:
            raise DynrouteError(f"the {self.name} policy takes no `thresholds`")

    def _check_answers(self, rule: ExitRule) -> None:
        if self.answers == "raw":
            if self.weights is not None or self.biases is not None:
                raise DynrouteError(
                    "raw answers take no `weights` or `biases` (calibrated or combined ones do)"
                )
            return
        if self.weights is None or self.biases is None:
            raise DynrouteError(
                f"{self.answers} answers need `weights` and `biases` fitted on held-out data: "
                "fit them with `calibrate`"
            )
        if not isinstance(self.weights, (list, tuple)) or not isinstance(
            self.biases, (list, tuple)
        ):
            raise DynrouteError("`weights` and `biases` must be lists (one per exit)")
        if len(self.weights) != len(self.biases):
            raise DynrouteError("a policy needs as many `weights` as `biases` (one per exit)")
        known = _CHECKED_ANSWERS.get(id(self.weights))
        if known is not None and known[0] is self.weights and known[1] is self.biases:
            return  # the very tuples an earlier policy checked (``replace`` of a threshold)
        weights = tuple(finite_numbers(w, "weights") for w in self.weights)
        biases = tuple(finite_numbers(b, "biases") for b in self.biases)
        if any(not w for w in weights):
            raise DynrouteError("every exit needs at least its own weight")
        if self.answers == "calibrated" and any(any(w[:-1]) for w in weights):
            raise DynrouteError("calibrated answers weigh only each exit's own answer")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "biases", biases)
        if len(_CHECKED_ANSWERS) >= 256:
            _CHECKED_ANSWERS.clear()
        _CHECKED_ANSWERS[id(weights)] = (weights, biases)

    # ------------------------------------------------------------------ properties
    @property
    def rule(self) -> ExitRule:
        return RULES[self.name]

    @property
    def uses_threshold(self) -> bool:
        """Whether the policy decides by the exits' answers (evaluating their heads)."""
        return self.rule.reads_exits

    @property
    def deployable(self) -> bool:
        return self.rule.deployable

    @property
    def learned(self) -> bool:
        """Whether the per-example decisions are learned (routers, scheduler)."""
        return self.rule.learned

    @property
    def cost_model(self) -> str:
        """The base accounting of its paths (``dynroute.core.decisions.path_macs`` adds what
        its answers and scheduler cost)."""
        if self.rule.needs_labels:
            return "oracle"
        return "threshold" if self.uses_threshold else "learned"

    def check(self, leaves: int, classes: int, passed: Sequence[int] | None = None) -> None:
        """Refuse parameters fitted for another tree: other exits or classes (``passed``:
        how many exits each exit's answer may combine, in leaf order)."""
        for what, values in (
            ("thresholds", self.thresholds),
            ("weights", self.weights),
            ("scheduler exits", None if self.scheduler is None else self.scheduler["exits"]),
        ):
            if values is not None and len(values) != leaves:
                raise DynrouteError(
                    f"the {self.describe()} policy has {len(values)} {what} for a tree of "
                    f"{leaves} exits: it was fitted on another network"
                )
        if self.biases is not None and any(len(b) != classes for b in self.biases):
            raise DynrouteError(
                f"the {self.describe()} policy's `biases` are not for {classes} classes: it was "
                "fitted on another network"
            )
        if self.weights is not None and passed is not None:
            for position, (w, m) in enumerate(zip(self.weights, passed, strict=True)):
                if len(w) != m + 1:
                    raise DynrouteError(
                        f"exit {position} of the {self.describe()} policy weighs {len(w)} "
                        f"answers, but {m + 1} reach it: it was fitted on another network"
                    )

    def describe(self) -> str:
        """``confidence on combined answers``: the rule and, unless raw, the answers."""
        return self.name if self.answers == "raw" else f"{self.name} on {self.answers} answers"

    def label(self) -> str:
        """The description with the threshold (``confidence 0.8 on calibrated answers``)."""
        if self.threshold is None:
            return self.describe()
        text = f"{self.name} {self.threshold:.6g}"
        return text if self.answers == "raw" else f"{text} on {self.answers} answers"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; ``Policy.from_dict`` reads it back."""
        data: dict[str, Any] = {"name": self.name, "threshold": self.threshold}
        if self.thresholds is not None:
            data["thresholds"] = list(self.thresholds)
        if self.answers != "raw":
            data["answers"] = self.answers
            data["weights"] = [list(w) for w in self.weights or ()]
            data["biases"] = [list(b) for b in self.biases or ()]
        if self.scheduler is not None:
            data["scheduler"] = self.scheduler
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """A policy from ``to_dict``'s data (or an old ``ensemble`` record)."""
        if not isinstance(data, dict):
            raise DynrouteError("a policy must be a JSON object")
        known = {"name", "threshold", "thresholds", "answers", "weights", "biases", "scheduler"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DynrouteError(f"unknown policy fields: {', '.join(unknown)}")
        values = dict(data)
        if not isinstance(values.get("name", "learned"), str):
            raise DynrouteError(f"a policy's `name` must be a string, got {values['name']!r}")
        if values.get("name") in ALIASES:
            rule, answers = ALIASES[values["name"]]
            per_exit = values.get("thresholds") is not None
            values.update(name="budgeted" if per_exit else rule, answers=answers)
            if per_exit:
                values.pop("threshold", None)
        for key in ("thresholds", "weights", "biases"):
            if isinstance(values.get(key), list):
                values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
        return cls(**values)


def resolve_name(name: str) -> tuple[str, str | None]:
    """A policy name as the command line gives it: (rule, answers it implies or None)."""
    if name in ALIASES:
        return ALIASES[name]
    if name not in RULES:
        raise DynrouteError(f"`policy` must be one of {', '.join(policy_names())}; got {name!r}")
    return name, None


def override_policy(
    current: Policy,
    name: str | None = None,
    threshold: float | None = None,
    answers: str | None = None,
) -> Policy:
    """``current`` with another rule, answers or threshold. Fitted parameters are kept from
    ``current`` where they still apply (its answers' weights under a new threshold); a
    policy that needs fitted parameters ``current`` lacks needs a budget instead."""
    if name is None and threshold is None and answers is None:
        return current
    rule, implied = resolve_name(name or current.name)
    kind = (
        answers or implied or (current.answers if name is None or rule == current.name else "raw")
    )
    if not RULES[rule].deployable:
        raise DynrouteError(f"the {rule} policy cannot classify new inputs (it needs labels)")
    spec = RULES[rule]
    if (
        implied is not None
        and rule == "confidence"
        and current.name == "budgeted"
        and (current.answers == implied and threshold is None)
    ):
        return current  # an ensemble calibrated with a threshold per exit
    if spec.parameter == "thresholds" or spec.parameter == "scheduler":
        if threshold is not None and spec.parameter == "thresholds":
            raise DynrouteError(f"the {rule} policy has a threshold per exit, not one `threshold`")
        if current.name != rule or current.answers != kind:
            raise DynrouteError(
                f"the {rule} policy is fitted on held-out data: choose it with `target_macs` "
                f"(or `dynroute calibrate --policy {rule}`)"
            )
        return current if threshold is None else replace(current, threshold=threshold)
    if kind != "raw" and current.answers != kind:
        raise DynrouteError(
            f"{kind} answers are fitted on held-out data: choose them with `target_macs` (or "
            f"`dynroute calibrate --policy {name or rule} --answers {kind}`)"
        )
    if spec.parameter == "none":
        if threshold is not None:
            raise DynrouteError(f"the {rule} policy takes no `threshold`")
        if kind != "raw":  # the routers decide; the exit taken answers as fitted
            return Policy(rule, answers=kind, weights=current.weights, biases=current.biases)
        return Policy(rule)
    if threshold is None:
        if current.name == rule and current.answers == kind:
            return current
        raise DynrouteError(f"the {rule} policy needs a `threshold` (or a `target_macs`)")
    weights = current.weights if kind != "raw" else None
    biases = current.biases if kind != "raw" else None
    return Policy(rule, threshold, answers=kind, weights=weights, biases=biases)


LEARNED = Policy()
