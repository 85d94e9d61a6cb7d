"""What an exit rule is, and the registry every part of dynroute reads its rules from.

An exit rule decides, from the answers an example's exits give, where it leaves. One
rule is one ``ExitRule`` subclass in one file, registered with ``@register_rule``; it
carries everything the rest of dynroute needs to know about it:

- its facts (``parameter``: what it is set by; ``bounded``; ``learned``; ``deployable``;
  ``passes_below``: whether a measure at most the threshold passes, not at least);
- ``measure``: its measure of one exit's answer (float32, torch-free: the torch engine,
  the exit tables and the export runtime all decide through ``dynroute.core.decisions``, which
  calls it);
- ``family``: its operating points on an exit table of held-out answers (by default, its
  threshold at the quantiles of its measure; a rule fitted on held-out data overrides it);
- ``check``, ``prepare`` and ``decision_macs`` for a rule with fitted parameters.

The engine, the policy tables, ``calibrate``, exports, the runtime and the command line's
choices all come from ``RULES``; ``docs/policies.md`` says how to add one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dynroute.core.errors import DynrouteError

if TYPE_CHECKING:
    from dynroute.core.policy import Policy

#: Thresholds tried per single-threshold rule: its measures at this many quantiles.
THRESHOLD_QUANTILES = 2001


class AnswerTable(Protocol):
    """What a rule's family reads: ``dynroute.policies.exit_table.ExitTable`` (every exit's
    answer on a held-out split, the paths, and replaying a policy on them)."""

    answers: Policy
    answer: np.ndarray
    correct: np.ndarray
    candidates: np.ndarray
    facts: Any
    outputs: Any

    def __len__(self) -> int: ...
    def point(self, positions: np.ndarray, policy: Policy) -> dict[str, float]: ...
    def subset(self, rows: np.ndarray) -> AnswerTable: ...
    def with_measures(self, policy: Policy, measures: np.ndarray) -> AnswerTable: ...
    def measures(self, policy: Policy) -> np.ndarray: ...
    def exits(self, policy: Policy) -> np.ndarray: ...
    def exits_for_thresholds(self, policy: Policy, thresholds: np.ndarray) -> np.ndarray | None: ...


class ExitRule:
    """One exit rule (the module's docstring). Subclasses set the class attributes and
    override what differs; an instance is registered in ``RULES`` by ``register_rule``."""

    name: str = ""
    summary: str = ""
    #: What sets it: ``none``, one ``threshold``, per-exit ``thresholds`` or a fitted
    #: ``scheduler`` plus its threshold.
    parameter: str = "threshold"
    #: Its threshold lies in [0, 1].
    bounded: bool = True
    #: Its per-example decisions are learned (not a fixed rule on the answers).
    learned: bool = False
    #: It decides by evaluating the exit heads (the threshold cost model); else the
    #: routers decide.
    reads_exits: bool = True
    #: Its parameters come from held-out data only (``calibrate`` and a budget).
    fitted: bool = False
    deployable: bool = True
    #: A measure passes when it is at most the threshold (entropy), else at least.
    passes_below: bool = False
    #: Its measure reads the raw answers of the exits an example passed.
    needs_history: bool = False
    #: It needs the labels (the oracle: a bound, never deployed).
    needs_labels: bool = False
    #: The answers ``calibrate`` fits it on unless told (``any``: every kind).
    default_answers: str = "raw"

    def check(self, policy: Policy) -> None:
        """Refuse a policy of this rule whose fitted parameters are malformed."""
        if policy.scheduler is not None:
            raise DynrouteError(f"the {self.name} policy takes no `scheduler`")

    def prepare(self, policy: Policy) -> Any:
        """What ``measure`` needs from the policy's parameters, computed once per policy."""
        return None

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        """(N,) float32: the rule's measure of exit ``position``'s answer (N, classes);
        ``history``: the raw log-softmaxes of the exits passed (N, m, classes) or None."""
        raise DynrouteError(f"the {self.name} rule does not read the exits' answers")

    def decision_macs(self, policy: Policy, position: int) -> int:
        """Multiply-adds its measure costs at an exit beyond the answer (0 for a measure of
        the answer alone, which counts as free beside the head)."""
        return 0

    def family(
        self, table: AnswerTable, fitted: Policy | None = None
    ) -> list[tuple[Policy, np.ndarray]]:
        """Its operating points on ``table`` (held-out answers) as (policy, exit positions)
        pairs; ``fitted``: parameters fitted before (an export's, being re-measured)."""
        return threshold_family(table, self.name)

    # ------------------------------------------------------------------ derived
    def passes(self, measure: np.ndarray, threshold: Any) -> np.ndarray:
        """Whether each measure is enough to stop (float32 comparisons)."""
        return measure <= threshold if self.passes_below else measure >= threshold

    def certainty(self, measure: np.ndarray) -> np.ndarray:
        """Higher is more certain (the most certain passing exit takes an example)."""
        return -measure if self.passes_below else measure

    def __repr__(self) -> str:
        return f"<exit rule {self.name}>"


#: Every exit rule, by name, in registration order.
RULES: dict[str, ExitRule] = {}


def register_rule(cls: type[ExitRule]) -> type[ExitRule]:
    """Class decorator: register an instance of the rule under its ``name``."""
    if not cls.name or not cls.summary:
        raise DynrouteError(f"exit rule {cls.__name__} needs a `name` and a `summary`")
    if cls.parameter not in ("none", "threshold", "thresholds", "scheduler"):
        raise DynrouteError(f"exit rule {cls.name}: unknown parameter {cls.parameter!r}")
    RULES[cls.name] = cls()
    return cls


def unregister_rule(name: str) -> None:
    """Remove a rule (tests that register a toy rule clean up with it)."""
    RULES.pop(name, None)


# --------------------------------------------------------------------------- families


def with_threshold(answers: Policy, name: str, threshold: float) -> Policy:
    """A single-threshold rule on ``answers``' answers."""
    return replace(answers, name=name, threshold=threshold, thresholds=None)


def thresholds_at_quantiles(table: AnswerTable, rule: Policy, count: int) -> list[float]:
    """The rule's measures at ``count`` quantiles of what the exits on the paths show,
    plus the bounds that send everyone to the first or the last exit."""
    candidates = table.candidates
    measure = table.measures(rule)
    shown = np.take_along_axis(
        measure, np.where(candidates >= 0, candidates, 0).reshape(len(table), -1), 1
    )[candidates.reshape(len(table), -1) >= 0]
    shown = shown[np.isfinite(shown)]
    if shown.size == 0:
        shown = np.array([0.5])
    values = np.quantile(shown.astype(np.float64), np.linspace(0, 1, count))
    if RULES[rule.name].bounded:
        values = np.clip(values, 0, 1)
        bounds = [0.0, 1.0]
    else:
        spread = float(values.max() - values.min()) or 1.0
        bounds = [float(values.min() - spread), float(values.max() + spread)]
    return sorted({*bounds, *(float(v) for v in values)})


def threshold_family(
    table: AnswerTable, rule: str | Policy, count: int = THRESHOLD_QUANTILES
) -> list[tuple[Policy, np.ndarray]]:
    """A single-threshold rule on the table's answers at every threshold worth trying:
    (policy, exit positions) pairs. ``rule``: its name, or a policy carrying its fitted
    parameters (a scheduler's models)."""
    template = with_threshold(table.answers, rule, 0.5) if isinstance(rule, str) else rule
    thresholds = thresholds_at_quantiles(table, template, count)
    policies = [replace(template, threshold=t) for t in thresholds]
    at_once = table.exits_for_thresholds(template, np.asarray(thresholds))
    if at_once is None:
        return [(policy, table.exits(policy)) for policy in policies]
    return [(policy, at_once[:, k]) for k, policy in enumerate(policies)]


def deployable_rules() -> Sequence[str]:
    """Names of the rules that can classify new inputs."""
    return tuple(name for name, rule in RULES.items() if rule.deployable)
