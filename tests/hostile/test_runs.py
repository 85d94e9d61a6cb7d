"""Runs are bound to the data they were trained on; checkpoints, records and run
directories that are damaged, foreign or from older versions are refused or read in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dynroute.runs import CALIBRATION_FILE, DATA_FILE, checkpoint_fingerprint
from helpers.hostile import (
    SWEEP,
    TRAIN,
    cli,
    copy_run,
    image_folder,
    png,
    refused,
    write_npz,
)


# ------------------------------------------------------------------ runs bound to their data
def test_a_run_records_what_it_was_trained_on(workspace):
    record = json.loads((workspace / "routed" / DATA_FILE).read_text())
    assert record["dataset"] == f"npz:{workspace / 'a.npz'}"
    assert record["class_names"] == ["0", "1", "2"]
    assert len(record["fingerprint"]) == 16 and len(record["content"]) == 16
    summary = json.loads((workspace / "routed" / "summary.json").read_text())
    assert summary["data"] == record


def test_resume_on_changed_folder_data_is_refused(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    train = ["train", "--dataset", f"folder:{root}", "--out", tmp_path / "run", *TRAIN]
    assert cli(capsys, *train)[0] == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    os.utime(root / "a" / "0.png")  # touched, not changed: the same data, so it resumes
    code, _, err = cli(capsys, *train, "--resume")
    assert code == 0, err
    (root / "a" / "0.png").write_bytes(png(200))  # changed
    line = refused(capsys, *train, "--resume")
    assert f"cannot resume {tmp_path / 'run'}: it was trained on folder:{root} (2 classes" in line
    assert "but the data given now is" in line and "they differ in the data" in line
    assert "--overwrite" in line
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_evaluate_and_policies_refuse_other_data_naming_both(workspace, tmp_path, capsys):
    run = workspace / "routed"
    other = write_npz(tmp_path / "b.npz", seed=1)  # 3 classes, other images
    more = write_npz(tmp_path / "c.npz", classes=4)
    for command in ("evaluate", "policies"):
        line = refused(capsys, command, run, "--dataset", other, "--threads", "1")
        assert f"{run} was trained on npz:{workspace / 'a.npz'} (3 classes: 0, 1, 2; data" in line
        assert f"the data given is {other} (3 classes" in line and "differ in the data" in line
    line = refused(capsys, "evaluate", run, "--dataset", more)
    assert "(4 classes: 0, 1, 2, 3" in line and "the number of classes" in line
    # A bare checkpoint records nothing, but its class count is checked all the same.
    line = refused(capsys, "evaluate", run / "checkpoint.pt", "--dataset", more)
    assert f"{run / 'checkpoint.pt'} is a network for 3 classes, but {more} has 4" in line


def test_calibrate_refuses_data_changed_since_training(workspace, tmp_path, capsys):
    run = copy_run(workspace, "routed", tmp_path)
    shutil.copy(workspace / "a.npz", tmp_path / "a.npz")
    record = json.loads((run / DATA_FILE).read_text())
    record["dataset"] = f"npz:{tmp_path / 'a.npz'}"
    (run / DATA_FILE).write_text(json.dumps(record))
    config = json.loads((run / "config.json").read_text())
    config["dataset"] = record["dataset"]
    (run / "config.json").write_text(json.dumps(config))
    assert cli(capsys, "calibrate", run, "--target-macs", "3")[0] == 0  # the same bytes
    write_npz(tmp_path / "a.npz", seed=5)  # replaced in place
    line = refused(capsys, "calibrate", run, "--target-macs", "3")
    assert "differ in the data" in line


def test_calibrate_refuses_runs_of_different_datasets(workspace, tmp_path, capsys):
    first = copy_run(workspace, "routed", tmp_path)
    second = Path(shutil.copytree(first, tmp_path / "other"))
    record = json.loads((second / DATA_FILE).read_text())
    record.update(dataset="cifar10", fingerprint="0" * 16, content="1" * 16)
    (second / DATA_FILE).write_text(json.dumps(record))
    line = refused(capsys, "calibrate", first, second, "--target-macs", "3")
    assert "calibrate chooses among runs of one dataset" in line
    assert f"{second} on cifar10 (3 classes: 0, 1, 2; data 0000000000000000)" in line
    assert not (first / "calibration.json").exists()


def test_static_runs_are_refused_by_policies_and_calibrate(workspace, capsys):
    for argv in (["policies"], ["calibrate", "--target-macs", "3"]):
        line = refused(capsys, argv[0], workspace / "static", *argv[1:])
        assert "is a static network (one exit, no routing)" in line


@pytest.mark.slow
def test_policies_on_a_named_dataset_never_overwrite_the_runs_own(workspace, tmp_path, capsys):
    run = copy_run(workspace, "routed", tmp_path)
    assert cli(capsys, "policies", run, "--threads", "1")[0] == 0
    own = (run / "policies-test.json").read_bytes()
    data = f"npz:{workspace / 'a.npz'}"
    code, out, err = cli(capsys, "policies", run, "--dataset", data, "--threads", "1")
    assert code == 0, err
    assert (run / "policies-test.json").read_bytes() == own
    assert list(run.glob("policies-test-on-npz-*.json")), out


def test_import_run_checks_the_registry_entry(workspace, tmp_path, capsys):
    results = tmp_path / "results"
    by_hand = ["import-run", workspace / "routed", "--experiment", "hybrid-actor"]
    line = refused(
        capsys, *by_hand, "--network", "k_cpt-4e-09", "--scale", "smoke", "--results", results
    )
    assert "is not the registry's hybrid-actor/k_cpt-4e-09 at scale smoke" in line
    assert "iterations 2 (registry: 4)" in line and "k_cpt 0.0 (registry: 4e-09)" in line
    assert not results.exists()


@pytest.mark.slow
def test_import_run_takes_a_sweeps_run_only_under_its_own_name(workspace, tmp_path, capsys):
    data = f"npz:{workspace / 'a.npz'}"
    runs, results = tmp_path / "runs", tmp_path / "results"
    sweep = ["sweep", *SWEEP, "--only", "static-1", "--dataset", data]
    assert cli(capsys, *sweep, "--runs", runs, "--results", results)[0] == 0
    (run,) = runs.glob("smoke-*/hybrid-static/static-1")
    record = json.loads((run / DATA_FILE).read_text())
    assert (record["experiment"], record["network"], record["scale"]) == (
        "hybrid-static",
        "static-1",
        "smoke",
    )
    imported = ["import-run", run, "--experiment", "hybrid-static", "--results", tmp_path / "i"]
    assert cli(capsys, *imported, "--network", "static-1", "--scale", "smoke")[0] == 0
    line = refused(capsys, *imported, "--network", "static-2", "--scale", "smoke")
    assert "was trained for network static-1 (filed under: static-2)" in line
    line = refused(capsys, *imported, "--network", "static-1", "--scale", "quick")
    assert "was trained for scale smoke (filed under: quick)" in line


def test_a_run_from_before_data_records_still_loads_with_one_warning(workspace, tmp_path, capsys):
    run = copy_run(workspace, "routed", tmp_path)
    (run / DATA_FILE).unlink()
    summary = json.loads((run / "summary.json").read_text())
    del summary["data"]
    (run / "summary.json").write_text(json.dumps(summary))
    code, out, err = cli(capsys, "evaluate", run, "--every-exit", "--threads", "1")
    assert code == 0 and "accuracy if every example left at one exit" in out
    assert err.count("has no record of the data it was trained on") == 1
    code, _, err = cli(capsys, "evaluate", run, "--threads", "1")
    assert code == 0 and "has no record" not in err  # once per run


# ------------------------------------------------------------------ what held before, holds
@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"not a checkpoint at all",
        lambda data: data[:100] + bytes(200) + data[300:],  # overwritten in the middle
    ],
)
def test_tampered_checkpoints_are_refused_in_one_line(workspace, tmp_path, capsys, damage):
    run = copy_run(workspace, "routed", tmp_path)
    path = run / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    line = refused(capsys, "evaluate", run, "--threads", "1")
    assert str(path) in line


# ------------------------------------------------------------------ checked calibrations
def _calibrated(workspace: Path, tmp_path: Path, capsys) -> Path:
    """A copy of the routed run calibrated as a point estimate (confidence, 3 M MACs)."""
    run = copy_run(workspace, "routed", tmp_path)
    calibrate = ["calibrate", run, "--policy", "confidence", "--target-macs", "3", "--threads", "1"]
    assert cli(capsys, *calibrate)[0] == 0
    return run


def _edit_calibration(run: Path, edit) -> None:
    path = run / CALIBRATION_FILE
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _consistent_guarantee(record: dict, **changes) -> None:
    """Give ``record`` a guarantee its numbers could hold (60 errors in 1000 certify accuracy
    0.9 at delta 0.1), certifying its own policy, with ``changes`` on top."""
    from dynroute.core.guarantee import METHOD_BINARY, binary_p_value, lower_bound

    record["target"] = {"mean_macs": None, "accuracy": 0.9, "disagreement": None, "delta": 0.1}
    record["guarantee"] = {
        "target": "accuracy",
        "level": 0.9,
        "delta": 0.1,
        "method": METHOD_BINARY,
        "n": 1000,
        "fit_examples": 1000,
        "bound": lower_bound(940, 1000, 0.1),
        "p_value": binary_p_value(60, 1000, 0.1),
        "policy": record["policy"],
        "k_cpt": None,
        **changes,
    }


FORGED_CALIBRATIONS = {
    "level 2, n 1, promise FORGED": lambda r: _consistent_guarantee(
        r, level=2, n=1, promise="FORGED"
    ),
    "a level given as text": lambda r: _consistent_guarantee(r, level="0.9"),
    "a level given as true": lambda r: _consistent_guarantee(r, level=True),
    "n = 1 with p = 0.01": lambda r: _consistent_guarantee(r, n=1, p_value=0.01),
    "a guarantee of another target": lambda r: (
        _consistent_guarantee(r),
        r["target"].update(accuracy=0.5),
    ),
    "a guarantee certified on the training split": lambda r: (
        _consistent_guarantee(r),
        r.update(split="train", train=r.pop("validation")),
    ),
    "a guarantee of another policy": lambda r: _consistent_guarantee(
        r, policy={"name": "confidence", "threshold": 0.77}
    ),
    "measured mean MACs of 1": lambda r: r["validation"].update(mean_macs=1),
    "a measured accuracy of 2": lambda r: r["test"].update(accuracy=2),
    "a k_cpt of 5": lambda r: r.update(k_cpt=5),
    "a policy name that is a list": lambda r: r["policy"].update(name=["confidence"]),
    "a target given as text": lambda r: r.update(target="3 M"),
    "a checkpoint digest that is not one": lambda r: r.update(checkpoint_sha256="abc"),
}


@pytest.mark.parametrize("name", list(FORGED_CALIBRATIONS))
def test_a_forged_calibration_is_refused_in_one_line(workspace, tmp_path, capsys, name):
    run = _calibrated(workspace, tmp_path, capsys)
    _edit_calibration(run, FORGED_CALIBRATIONS[name])
    line = refused(capsys, "evaluate", run, "--threads", "1")
    assert str(run / CALIBRATION_FILE) in line and "run `dynroute calibrate` again" in line


def test_a_calibrations_promise_is_written_from_its_numbers(workspace, tmp_path, capsys):
    """``predict`` reports the promise dynroute writes from the checked numbers, whatever
    the file says (``"promise": 12345``)."""
    run = _calibrated(workspace, tmp_path, capsys)
    _edit_calibration(run, lambda r: _consistent_guarantee(r, promise=12345))
    (tmp_path / "x.png").write_bytes(png(90))
    code, _, err = cli(
        capsys, "predict", run, tmp_path / "x.png", "--no-progress", "--threads", "1"
    )
    assert code == 0, err
    assert "guaranteed: accuracy >= 0.9 on new data like the calibration split" in err
    assert "12345" not in err


def test_a_calibration_is_bound_to_its_checkpoint(workspace, tmp_path, capsys):
    """A calibration that records its checkpoint's SHA-256 is refused once the checkpoint is
    replaced (copied from another run): its threshold was fitted on another network."""
    run = _calibrated(workspace, tmp_path, capsys)
    digest = checkpoint_fingerprint(run / "checkpoint.pt")
    _edit_calibration(run, lambda r: r.update(checkpoint_sha256=digest))
    assert cli(capsys, "evaluate", run, "--threads", "1")[0] == 0
    other = copy_run(workspace, "routed", tmp_path / "other")
    assert cli(capsys, "train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", other,
               "--overwrite", "--seed", "1", "--validation-size", "6", *TRAIN)[0] == 0  # fmt: skip
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    line = refused(capsys, "evaluate", run, "--threads", "1")
    assert "was fitted on another network than" in line and "SHA-256 differs" in line


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps({"dataset": "hybrid", "validation_size": "x"}), "`validation_size` must be"),
        (json.dumps({"dataset": ["hybrid"]}), "must be text, got ['hybrid']"),
        (json.dumps({"seed": 1.5}), "`seed` must be an integer"),
        (json.dumps({"test_fraction": float("nan")}), "`test_fraction` must be a finite number"),
    ],
)
def test_a_hostile_run_config_is_one_line(workspace, tmp_path, capsys, config, message):
    run = copy_run(workspace, "routed", tmp_path)
    (run / "config.json").write_text(config)
    line = refused(capsys, "evaluate", run, "--threads", "1")
    assert message in line and str(run / "config.json") in line
