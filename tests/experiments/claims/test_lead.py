"""The lead claims: the routed network's MAC ratio against its dataset's goal."""

from __future__ import annotations

from dynroute.experiments.claims import NOT_SUPPORTED, SUPPORTED, Context
from dynroute.experiments.claims.lead import LEAD_GOALS, lead_claims


def _study(dataset: str, interval: tuple[float, float]) -> dict:
    return {
        "study": "lead",
        "dataset": dataset,
        "mac_ratio": sum(interval) / 2,
        "mac_ratio_interval": list(interval),
        "routed": {
            "family": "scheduler",
            "run": "runs/a",
            "test": {"mean_macs": 2e6, "accuracy": 0.9},
        },
        "static": {"network": "static-4", "test": {"mean_macs": 8e6, "accuracy": 0.9}},
        "versus_static": {"accuracy_difference": 0.001, "p_value": 0.8},
    }


def test_supported_only_when_the_whole_interval_reaches_the_goal() -> None:
    goal = LEAD_GOALS["cifar10"]
    studies = {
        "lead-a": _study("cifar10", (goal, goal + 1)),
        "lead-b": _study("cifar10", (goal - 0.1, goal + 1)),
        "other": {"study": "guarantees", "rows": []},
    }
    first, second = lead_claims(Context({}, studies=studies))
    assert first.verdict == SUPPORTED and second.verdict == NOT_SUPPORTED
    assert f"at least {goal:g}× fewer MACs (CIFAR-10;" in first.claim
    assert "scheduler on runs/a at 2.00 M, 90.00 % on test, against static-4 at" in first.evidence
    # A static net answering through its recalibrated exit says so.
    studies["lead-a"]["static"]["answers"] = "calibrated"
    first, _ = lead_claims(Context({}, studies=studies))
    assert "against static-4 (recalibrated exit) at 8.00 M" in first.evidence


def test_a_dataset_without_a_goal_needs_fewer_macs_and_a_routed_point() -> None:
    studies = {"lead-a": _study("mnist", (1.1, 2.0)), "lead-b": {"study": "lead", "routed": None}}
    first, second = lead_claims(Context({}, studies=studies))
    assert first.claim.endswith("with fewer MACs (lead-a)") and first.verdict == SUPPORTED
    assert second.verdict == NOT_SUPPORTED and second.evidence.startswith("no routed point")
    assert lead_claims(Context({})) == []
