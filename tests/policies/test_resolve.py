"""One resolver for a run's operating point: every command asks it, so they agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy, override_policy
from dynroute.policies.calibration import calibrate
from dynroute.policies.resolve import resolve_operating_point
from dynroute.runs import open_run


def test_without_calibration_the_routers_decide(run_copy: Path) -> None:
    point = resolve_operating_point(open_run(run_copy))
    assert point.policy == Policy() and point.how == "learned routers (no calibration)"
    given = resolve_operating_point(open_run(run_copy), "confidence", 0.7)
    assert given.policy == Policy("confidence", 0.7) and given.how == "given"
    with pytest.raises(DynrouteError, match="fitted on held-out data: choose it with"):
        resolve_operating_point(open_run(run_copy), "budgeted")


@pytest.mark.parametrize("name", ["budgeted", "ensemble", "scheduler"])
def test_evaluate_runs_a_calibrated_fitted_policy_by_its_name(
    run_copy: Path, name: str, capsys
) -> None:
    """The bug the resolver fixes: ``evaluate RUN --policy ensemble`` (or budgeted) after
    ``calibrate`` used to refuse; now every command keeps the calibrated parameters."""
    record = calibrate(run_copy, target_macs=1.2e6, policy=name)
    capsys.readouterr()
    assert main(["evaluate", str(run_copy), "--policy", name, "--json", "--threads", "1"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["policy"] == record["policy"]
    point = resolve_operating_point(open_run(run_copy), name)
    assert point.policy == Policy.from_dict(record["policy"]) and point.how == "calibrated"


def test_a_budget_is_chosen_on_validation_and_every_option_checked_once(run_copy: Path) -> None:
    run = open_run(run_copy)
    point = resolve_operating_point(run, "confidence", target_macs=1.1e6)
    assert point.policy.name == "confidence" and point.candidates
    assert max(c.mean_macs for c in point.candidates if c.policy == point.policy) <= 1.1e6
    for bad, match in (
        ({"target_macs": float("nan")}, "target_macs"),
        ({"k_cpt": -1.0}, "k_cpt"),
        ({"policy": "greedy"}, "`policy` must be one of"),
        ({"policy": "confidence", "threshold": 0.5, "target_macs": 1e6}, "not both"),
    ):
        with pytest.raises(DynrouteError, match=match):
            resolve_operating_point(run, **bad)


def test_overriding_keeps_what_still_applies() -> None:
    combined = Policy("confidence", 0.5, answers="combined", weights=[[1.0]], biases=[[0.0, 0.0]])
    assert override_policy(combined, threshold=0.8).weights == combined.weights
    assert override_policy(combined, "ensemble") is combined
    assert override_policy(combined, "entropy", 0.3).answers == "raw"  # a rule asked for: raw
    assert override_policy(combined, "entropy", 0.3, answers="combined").answers == "combined"
    assert override_policy(combined, "confidence", 0.3, answers="raw") == Policy("confidence", 0.3)
    with pytest.raises(DynrouteError, match="calibrated answers are fitted"):
        override_policy(combined, "confidence", 0.3, answers="calibrated")
    with pytest.raises(DynrouteError, match="needs labels|needs the labels"):
        override_policy(combined, "oracle")
