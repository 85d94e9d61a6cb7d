"""Every file is written whole or not at all (a full disk is a mocked ``OSError(ENOSPC)``):
what was there before stays intact, and the message names the file."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest
import torch

from dynroute.cli import main
from dynroute.io import atomic
from helpers.hostile import (
    SWEEP,
    TRAIN,
    cli,
    copy_run,
    fail_writes_to,
    refused,
)


# ------------------------------------------------------------------ whole or not at all
def test_a_full_disk_during_training_keeps_the_last_checkpoint(
    workspace, dataset_cache, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    train = ["train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", run, *TRAIN]
    train += ["--iterations", "4", "--checkpoint-every", "2", "--eval-every", "2"]
    fail_writes_to(monkeypatch, ".checkpoint.pt.", after=1)  # the second checkpoint
    line = refused(capsys, *train)
    assert line == (
        f"dynroute: error: cannot write {run / 'checkpoint.pt'}: no space left on the device "
        "(the disk is full); its previous version is kept"
    )
    assert torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["step"] == 2
    assert not list(run.glob(".*.tmp"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]
    monkeypatch.undo()
    monkeypatch.setenv("DYNROUTE_CACHE", str(dataset_cache))
    code, _, err = cli(capsys, *train, "--resume")  # the disk has room again
    assert code == 0, err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2, 4]


def test_a_metrics_line_is_appended_whole_or_not_at_all(workspace, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:  # a disk that fills up mid-line
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    train = ["train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", run, *TRAIN]
    line = refused(capsys, *train)
    assert f"cannot write {run / 'metrics.jsonl'}: no space left on the device" in line
    assert (run / "metrics.jsonl").read_bytes() == b""  # the half line was taken back


def test_a_half_line_left_by_an_older_version_is_skipped_with_a_warning(
    workspace, tmp_path, capsys
):
    run = copy_run(workspace, "routed", tmp_path)
    whole = (run / "metrics.jsonl").read_text()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 3, "test": {"accu')  # killed mid-line
    train = ["train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", run, *TRAIN]
    code, _, err = cli(capsys, *train, "--validation-size", "6", "--resume")
    assert code == 0, err
    assert f"dynroute: skipped 1 unreadable line(s) of {run / 'metrics.jsonl'}" in err
    assert (run / "metrics.jsonl").read_text() == whole


def test_a_full_disk_keeps_the_previous_calibration(workspace, tmp_path, capsys, monkeypatch):
    run = copy_run(workspace, "routed", tmp_path)
    assert cli(capsys, "calibrate", run, "--target-macs", "3")[0] == 0
    before = (run / "calibration.json").read_bytes()
    fail_writes_to(monkeypatch, ".calibration.json.")
    line = refused(capsys, "calibrate", run, "--target-accuracy", "0.1")
    assert line == (
        f"dynroute: error: cannot write {run / 'calibration.json'}: no space left on the device "
        "(the disk is full); its previous version is kept"
    )
    assert (run / "calibration.json").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


def test_a_read_only_disk_keeps_the_previous_figure(workspace, tmp_path, capsys, monkeypatch):
    run = copy_run(workspace, "routed", tmp_path)
    (run / "policies-test.png").write_bytes(b"the previous figure")
    fail_writes_to(monkeypatch, ".policies-test.png.", error=errno.EROFS)
    line = refused(capsys, "policies", run, "--threads", "1")
    assert line.endswith(
        f"cannot write {run / 'policies-test.png'}: the file system is read-only; its previous "
        "version is kept"
    )
    assert (run / "policies-test.png").read_bytes() == b"the previous figure"
    assert not list(run.glob(".*.tmp"))


def test_a_full_disk_keeps_the_previous_report(tmp_path, capsys, monkeypatch):
    from dynroute.plots import figures
    from helpers.experiment_results import write_curve

    monkeypatch.setattr(figures, "render", lambda *args, **kwargs: [])  # no figures: faster
    write_curve(tmp_path, "smoke", "hybrid-static", [(0.5 + i / 100, i * 1e6) for i in range(8)])
    assert cli(capsys, "report", "--scale", "smoke", "--results", tmp_path)[0] == 0
    report = (tmp_path / "smoke" / "report.md").read_text()
    write_curve(tmp_path, "smoke", "hybrid-static", [(0.6 + i / 100, i * 1e6) for i in range(8)])
    fail_writes_to(monkeypatch, ".report.md.")
    line = refused(capsys, "report", "--scale", "smoke", "--results", tmp_path)
    assert f"cannot write {tmp_path / 'smoke' / 'report.md'}: no space left" in line
    assert (tmp_path / "smoke" / "report.md").read_text() == report


def test_a_full_disk_writes_no_result_file(workspace, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    fail_writes_to(monkeypatch, "static-1.json.")
    sweep = ["sweep", *SWEEP, "--only", "static-1", "--dataset", f"npz:{workspace / 'a.npz'}"]
    line = refused(capsys, *sweep, "--runs", tmp_path / "runs", "--results", results)
    path = results / "smoke" / "hybrid-static" / "static-1.json"
    assert line == (
        f"dynroute: error: cannot write {path}: no space left on the device (the disk is full); "
        "nothing was written"
    )
    assert not list(results.rglob("*static-1.json*"))


def test_a_disk_that_fills_while_rows_are_written_leaves_the_previous_file(tmp_path):
    """Rows streamed to ``--out`` until a write itself fails (a file-size limit, as a full
    disk does): one line naming the file, the previous version whole, no temporary file."""
    import subprocess
    import sys

    import numpy as np

    from helpers.delivery import make_export
    from helpers.hostile import SRC

    export = make_export(tmp_path / "export")
    np.save(tmp_path / "many.npy", np.zeros((3000, 8, 8), np.uint8))  # 250 KB of rows
    out = tmp_path / "rows.csv"
    out.write_text("the previous rows\n")
    limited = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY)); "
        "from dynroute.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["predict", export, tmp_path / "many.npy", "--out", out, "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", limited, *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"dynroute: error: cannot write {out}: File too large; its previous version is kept"
    )
    assert "Traceback" not in result.stderr
    assert out.read_text() == "the previous rows\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_folders_are_one_line(workspace, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    data = f"npz:{workspace / 'a.npz'}"
    sweep = ["sweep", *SWEEP, "--only", "static-1", "--dataset", data]
    line = refused(capsys, *sweep, "--results", blocker / "results", "--runs", tmp_path / "runs")
    assert f"cannot create the results folder {blocker / 'results' / 'smoke'}" in line
    assert "a part of the path is a file, not a folder" in line
    line = refused(capsys, *sweep, "--results", tmp_path / "results", "--runs", blocker / "runs")
    assert "cannot create the training state folder" in line
    line = refused(capsys, "train", "--dataset", data, "--out", blocker / "run", *TRAIN)
    assert f"cannot create the run directory {blocker / 'run'}" in line
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, **kwargs):
        if str(tmp_path / "figures") in str(kwargs.get("dir", "")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    run = workspace / "routed"
    line = refused(capsys, "policies", run, "--out", tmp_path / "figures", "--threads", "1")
    assert f"cannot write {tmp_path / 'figures' / 'routed-test.json'}: the file system is " in line


def test_non_finite_numbers_never_reach_json(workspace, tmp_path, capsys):
    run = copy_run(workspace, "routed", tmp_path)
    for value in ("inf", "nan", "-1", "0"):
        with pytest.raises(SystemExit):
            main(["calibrate", str(run), "--target-macs", value])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--target-macs: must be a positive" in line
    assert not (run / "calibration.json").exists()
    with pytest.raises(atomic.DynrouteError, match="not finite"):
        atomic.write_json_atomic(tmp_path / "x.json", {"accuracy": float("nan")})
    assert not (tmp_path / "x.json").exists()
