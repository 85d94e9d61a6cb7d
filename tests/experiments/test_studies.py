"""The studies behind the policy evidence (``dynroute study``), on a tiny trained run."""

from __future__ import annotations

import json

import pytest

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.experiments import studies
from helpers.delivery import SIZE

METHODS = {
    "calibrate --policy best",
    "calibrate --policy best, cost-ordered path",
    "per-exit thresholds",
    "one shared threshold",
    "naive point estimate",
}


def test_held_out_measures_every_variant_against_the_best_baseline(run_copy) -> None:
    study = studies.held_out(run_copy, sisters=[run_copy], larger=run_copy, budgets=[1e12])
    assert study["num_validation"] == 60 and study["num_test"] == 90
    (row,) = study["budgets"]
    assert set(row["scheduler"]) == {
        "own validation split",
        "pooled with 1 sister runs' splits",
        "training-set outputs, intercepts refitted on validation",
    }
    for cell in row["scheduler"].values():
        assert -1 <= cell["accuracy_difference"] <= 1 and 0 <= cell["p_value"] <= 1
    larger = study["larger_validation"]
    # The same run as its own "larger" sister: its exits and its rows are the run's own.
    assert larger["num_validation"] == 60 and larger["exits"] == study["exits"]
    assert larger["budgets"][0]["best_baseline"] == row["best_baseline"]
    assert (
        larger["budgets"][0]["scheduler"]["own validation split"]
        == (row["scheduler"]["own validation split"])
    )


def test_a_target_every_point_meets_is_certified_on_every_draw(run_copy) -> None:
    study = studies.guarantees(run_copy, targets=[0.05], partitions=2, calibration_size=100)
    assert study["held_out"] == 150 and study["calibration_size"] == 100
    assert {row["method"] for row in study["rows"]} == METHODS
    assert {row["delta"] for row in study["rows"]} == {0.05, 0.1, 0.2}
    for row in study["rows"]:
        assert row["certified"] == 2 and row["violation_rate"] == 0.0
        # The cheapest point reaches 5 %: the first exit, which saves MACs.
        assert 0 < row["macs_saved"] < 1
        if row["method"] != "naive point estimate":  # calibrate's estimate, checked
            assert row["estimated_certification"] == 1.0


def test_an_unreachable_target_is_refused_not_counted(run_copy) -> None:
    study = studies.guarantees(run_copy, targets=[0.999], partitions=1, calibration_size=100)
    for row in study["rows"]:
        if row["method"] == "naive point estimate":  # may "reach" it on 100 examples
            continue
        # Nothing promised, nothing broken: the rate counts every draw.
        assert row["certified"] == 0 and row["violation_rate"] == 0.0
        assert row["violation_rate_when_certified"] is None


def test_the_study_command_writes_what_the_report_reads(run_copy, tmp_path) -> None:
    out = tmp_path / "studies" / "guarantees-small.json"
    assert main(["study", "guarantees", str(run_copy), "--targets", "0.05", "--partitions",
                 "1", "--calibration-size", "100", "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["study"] == "guarantees"
    with pytest.raises(SystemExit):
        main(["study", "nonsense", str(run_copy)])


def _static(validation: float, test: float, macs: float, correct: list[bool]) -> dict:
    from dynroute.policies.statistics import pack_bits

    return {
        "validation": {"accuracy": validation, "mean_macs": macs},
        "accuracy": test,
        "mean_macs": macs,
        "correct_bits": pack_bits(correct),
        "points": [{"num_examples": len(correct)}],
    }


def test_the_lead_holds_the_cheapest_sufficient_point_against_the_best_static(run_copy) -> None:
    """The static net is chosen on validation (not the one best on test), the routed point
    is the cheapest on validation reaching its accuracy; both are scored on test."""
    statics = {
        "static-2": _static(0.20, 0.9, 3e6, [True] * 90),  # best on test, worse on validation
        "static-3": _static(0.25, 0.3, 7e6, [k % 3 == 0 for k in range(90)]),
    }
    study = studies.lead([run_copy], statics)
    assert study["static"]["network"] == "static-3" and study["target_accuracy"] == 0.25
    routed = study["routed"]
    assert routed["validation"]["accuracy"] >= 0.25
    ratio = 7e6 / routed["test"]["mean_macs"]
    assert study["mac_ratio"] == pytest.approx(ratio)
    low, high = study["mac_ratio_interval"]
    assert low <= ratio <= high
    assert study["versus_static"]["only_first"] + study["versus_static"]["only_second"] > 0
    assert study["best_validation_accuracy"] >= routed["validation"]["accuracy"]
    with pytest.raises(DynrouteError, match="validation point"):
        studies.lead([run_copy], {"old": {"accuracy": 0.5, "mean_macs": 1e6}})


def test_the_lead_recalibrates_a_static_exit_only_on_validation(
    run_copy, small_run, tmp_path
) -> None:
    """With its run folder, the static network may answer through its exit recalibrated on
    validation (the routed side may): kept only where validation says it is better, and
    scored on test from the network itself, not from its result file."""
    static_run = tmp_path / "static-2"
    npz = small_run.parent / "colours.npz"  # the small run's own data and split
    assert main(["train", "--dataset", f"npz:{npz}", "--image-size", str(SIZE),
                 "--model", "static-2", "--iterations", "20", "--batch-size", "32",
                 "--validation-size", "60", "--eval-every", "20", "--threads", "1",
                 "--no-progress", "--out", str(static_run)]) == 0  # fmt: skip
    # The result file is a stand-in: every test example wrong, validation 0 %.
    statics = {"static-2": _static(0.0, 0.0, 3e6, [False] * 90)}
    study = studies.lead([run_copy], statics, static_runs={"static-2": static_run})
    chosen = study["static"]
    assert chosen["recalibrated_on_validation"] == ["static-2"]
    assert chosen["answers"] in ("raw", "calibrated")
    # Scored from the checkpoint: better than the stand-in's 0 % on both splits.
    assert chosen["validation"]["accuracy"] > 0 and chosen["test"]["accuracy"] > 0
    without = studies.lead([run_copy], statics)
    assert without["static"]["answers"] == "raw"
    assert without["static"]["recalibrated_on_validation"] == []


def test_two_networks_studies_never_share_a_file(tmp_path) -> None:
    """A sweep's run folders are named after the network (``multi-exit``) inside their
    experiment: the default study file says which experiment, so the studies of
    hybrid-multi-exit and cifar10-multi-exit no longer overwrite each other."""
    from dynroute.commands.experiments import run_label

    for folder in ("cpu/hybrid-multi-exit/multi-exit", "cpu/cifar10-multi-exit/multi-exit",
                   "cpu/hybrid-actor/k_cpt-4e-09", "mine"):  # fmt: skip
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text("{}")
    labels = [
        run_label(str(tmp_path / f))
        for f in ("cpu/hybrid-multi-exit/multi-exit", "cpu/cifar10-multi-exit/multi-exit",
                  "cpu/hybrid-actor/k_cpt-4e-09", "mine")
    ]  # fmt: skip
    assert labels == ["hybrid-multi-exit", "cifar10-multi-exit", "hybrid-actor-k_cpt-4e-09", "mine"]
