"""The guarantee claims read the violation rate and the MACs saved of guarantee studies."""

from __future__ import annotations

import math

from dynroute.experiments.claims import NOT_RUN, NOT_SUPPORTED, SUPPORTED, Context
from dynroute.experiments.claims.guarantees import guarantees_hold, per_exit_guarantees_save_more

SAVED = {"per-exit thresholds": 0.6, "one shared threshold": 0.5, "naive point estimate": 0.7}
HELD = {"per-exit thresholds": 0.09, "one shared threshold": 0.11, "naive point estimate": 0.5}


def _context(violations: dict[str, float], saved: dict[str, float]) -> Context:
    rows = [
        {"method": method, "target": 0.9, "delta": 0.1, "partitions": 500, "certified": 500,
         "violation_rate": rate, "standard_error": math.sqrt(0.1 * 0.9 / 500),
         "macs_saved": saved[method], "mean_accuracy": 0.91}
        for method, rate in violations.items()
    ]  # fmt: skip
    study = {"study": "guarantees", "run": "runs/cpu/net/multi-exit", "rows": rows}
    return Context({}, studies={"guarantees-net": study})


def test_guarantees_hold_and_per_exit_thresholds_save_more() -> None:
    context = _context(HELD, SAVED)
    hold, save = guarantees_hold(context), per_exit_guarantees_save_more(context)
    assert hold.verdict == SUPPORTED, hold.evidence
    assert "2 of 2" in hold.evidence and "on net," in hold.evidence  # the network, not its run
    assert "naive point estimate violates at 50–50 %" in hold.evidence
    assert save.verdict == SUPPORTED and "+10.0 to +10.0 points" in save.evidence


def test_a_violation_beyond_two_standard_errors_breaks_the_promise() -> None:
    # Beyond delta by more than two standard errors (0.027 here): the promise is broken.
    context = _context(
        {**HELD, "one shared threshold": 0.16}, {**SAVED, "per-exit thresholds": 0.4}
    )
    hold = guarantees_hold(context)
    assert hold.verdict == NOT_SUPPORTED
    # The evidence names the cell over the bound, not merely the largest rate.
    assert "1 of 2" in hold.evidence and "over: one shared threshold on net" in hold.evidence
    assert "16.0 % of 500 draws (500 certified; bound 12.7 %)" in hold.evidence
    assert per_exit_guarantees_save_more(context).verdict == NOT_SUPPORTED


def test_without_a_guarantee_study_the_claims_are_left_out() -> None:
    assert guarantees_hold(Context({})) is None
    assert per_exit_guarantees_save_more(Context({})) is None
    naive_only = _context({"naive point estimate": 0.5}, SAVED)
    assert guarantees_hold(naive_only).verdict == NOT_RUN
    assert per_exit_guarantees_save_more(naive_only).verdict == NOT_RUN
