"""MSDNet's budgeted rule (Huang et al., ICLR 2018): a confidence threshold per exit,
fitted to a budget. The share of examples leaving at the exit of depth d follows q^d
(normalised), and each depth's threshold is the confidence quantile that lets that share
out on held-out data; q on a log grid makes the family."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from dynroute.core.probabilities import confidence
from dynroute.core.rules.base import AnswerTable, ExitRule, register_rule

if TYPE_CHECKING:
    from dynroute.core.policy import Policy

#: q is searched over [1/Q_RANGE, Q_RANGE] (log scale).
Q_RANGE = 1e3
#: Values of q tried for the family.
Q_COUNT = 401


@register_rule
class Budgeted(ExitRule):
    name = "budgeted"
    summary = "confidence against a threshold per exit, fitted to a budget (MSDNet)"
    parameter = "thresholds"
    fitted = True

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        return confidence(answer)

    def family(
        self, table: AnswerTable, fitted: Policy | None = None
    ) -> list[tuple[Policy, np.ndarray]]:
        return budgeted_family(table)


def _depths(table: AnswerTable) -> list[int]:
    """Each exit's depth on the paths (its step column); -1 for exits only ever terminal."""
    depth = [-1] * table.answer.shape[1]
    for d in range(table.candidates.shape[1]):
        for position in np.unique(table.candidates[:, d]).tolist():
            if position >= 0 and depth[position] < 0:
                depth[position] = d
    return depth


def budgeted_thresholds(table: AnswerTable, q: float) -> Policy:
    """The budgeted policy on the table's answers whose exit shares follow q^depth."""
    template = replace(
        table.answers,
        name="budgeted",
        threshold=None,
        thresholds=(0.5,) * table.answer.shape[1],
    )
    measure = table.measures(template)
    candidates = table.candidates
    n, depth_count, _ = candidates.shape
    first = np.where(candidates[:, :, 0] >= 0, candidates[:, :, 0], 0)
    values_at = np.take_along_axis(measure, first, 1)  # the first exit offered at each depth
    offered = candidates[:, :, 0] >= 0
    levels = [d for d in range(depth_count) if offered[:, d].any()]
    shares = q ** np.arange(len(levels) + 1, dtype=np.float64)
    shares /= shares.sum()
    share_of = dict(zip(levels, shares, strict=False))
    remaining = np.ones(n, dtype=bool)
    by_depth = []
    for d in range(depth_count):
        here = remaining & offered[:, d]
        values = values_at[here, d]
        take = int(round(share_of.get(d, 0.0) * n))
        if take <= 0 or len(values) == 0:
            threshold = 2.0  # nobody leaves here
        elif take >= len(values):
            threshold = -1.0  # everybody who gets here leaves
        else:
            threshold = float(np.sort(values)[::-1][take - 1])
        by_depth.append(threshold)
        remaining &= ~(here & (values_at[:, d] >= np.float32(threshold)))
    thresholds = [by_depth[d] if d >= 0 else 2.0 for d in _depths(table)]
    return replace(template, thresholds=tuple(thresholds))


def budgeted_family(table: AnswerTable, count: int = Q_COUNT) -> list[tuple[Policy, np.ndarray]]:
    """The budgeted policy for q on a log grid: (policy, exit positions) pairs."""
    family = []
    for q in np.logspace(-math.log10(Q_RANGE), math.log10(Q_RANGE), count):
        policy = budgeted_thresholds(table, float(q))
        family.append((policy, table.exits(policy)))
    return family
