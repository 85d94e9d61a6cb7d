"""One process writes a run or a sweep's state at a time; Ctrl-C, SIGTERM and SIGKILL stop
cleanly, and the run resumes to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dynroute.core.errors import Interrupted, stop_signals
from dynroute.io.atomic import write_atomic
from helpers.hostile import (
    SRC,
    SWEEP,
    TRAIN,
    cli,
    copy_run,
    refused,
)


# ------------------------------------------------------------------ one writer per folder
def _hold_lock(folder: Path, doing: str) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a running trainer or sweep would."""
    code = (
        "import sys, time; from dynroute.io.atomic import FolderLock; "
        "FolderLock(sys.argv[1], 'folder', sys.argv[2]).acquire(); print('held', flush=True); "
        "time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), doing],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_of_a_run_is_refused_and_a_killed_one_leaves_no_lock(
    workspace, tmp_path, capsys
):
    run = copy_run(workspace, "routed", tmp_path)
    holder = _hold_lock(run, "training")
    try:
        train = ["train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", run]
        line = refused(capsys, *train, "--validation-size", "6", *TRAIN, "--resume")
        assert f"the run directory {run} is in use by another dynroute process" in line
        assert f"(process {holder.pid}, training)" in line
        line = refused(capsys, "calibrate", run, "--target-macs", "3")
        assert "is in use by another dynroute process" in line
        assert not (run / "calibration.json").exists()
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    assert cli(capsys, "calibrate", run, "--target-macs", "3")[0] == 0


def test_a_second_sweep_on_the_same_state_folder_is_refused(workspace, tmp_path, capsys):
    data = f"npz:{workspace / 'a.npz'}"
    state = tmp_path / "runs" / f"smoke-npz-{str(workspace / 'a.npz')[1:].replace('/', '-')}"
    holder = _hold_lock(state, "sweep smoke")
    try:
        sweep = ["sweep", *SWEEP, "--only", "static-1", "--dataset", data]
        line = refused(capsys, *sweep, "--runs", tmp_path / "runs", "--results", tmp_path / "r")
        assert f"the training state folder {state} is in use by another dynroute process" in line
        assert "sweep smoke" in line
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp_path / "r").rglob("*.json"))


# ------------------------------------------------------------------ clean stops
def _signal_when(path_glob: Path, pattern: str, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once a file matching ``pattern`` appears."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(path_glob.glob(pattern)):
            time.sleep(0.01)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_stops_training_cleanly_and_it_resumes(workspace, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--dataset", f"npz:{workspace / 'a.npz'}", "--out", run, "--no-progress"]
    train += ["--iterations", "400", "--batch-size", "8", "--checkpoint-every", "2"]
    train += ["--eval-every", "400", "--threads", "1"]
    watcher = _signal_when(run, "checkpoint.pt", signal.SIGTERM)
    started = time.monotonic()
    code, _, err = cli(capsys, *train)
    watcher.join()
    assert code == 143 and time.monotonic() - started < 30
    assert f"dynroute: training stopped by SIGTERM; {run} keeps its last checkpoint" in err
    assert "--resume" in err
    assert not list(run.glob(".*.tmp"))  # no half-written file left behind
    step = torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["step"]
    assert 2 <= step < 400


def test_a_stop_during_a_checkpoint_write_comes_after_the_file_is_whole(tmp_path):
    """torch.save drives the write from C++; a stop raised inside its write callback could
    come out as torch's own error. Held until the file is in place, it is a clean stop
    with the new checkpoint kept whole."""
    path = tmp_path / "checkpoint.pt"
    state = {"weights": torch.arange(50_000.0)}

    def save(handle):
        class SignalsOnFirstWrite:
            sent = False

            def write(self, data):
                if not self.sent:
                    self.sent = True
                    os.kill(os.getpid(), signal.SIGINT)
                return handle.write(data)

            def flush(self):
                handle.flush()

        torch.save(state, SignalsOnFirstWrite())

    with pytest.raises(Interrupted), stop_signals():
        write_atomic(path, save)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], state["weights"])
    assert not list(tmp_path.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_ctrl_c_stops_a_sweep_at_once_and_the_next_one_resumes(workspace, tmp_path, capsys):
    data = f"npz:{workspace / 'a.npz'}"
    results = tmp_path / "results"
    sweep = ["sweep", *SWEEP, "--dataset", data, "--runs", tmp_path / "runs"]
    sweep += ["--results", results, "--only", "static-1", "--only", "static-2"]
    watcher = _signal_when(results, "smoke/hybrid-static/static-1.json", signal.SIGINT)
    code, _, err = cli(capsys, *sweep)
    watcher.join()
    if code == 0:  # the signal came after the last network: nothing to stop
        pytest.skip("the sweep finished before the signal")
    assert code == 130, err
    assert "dynroute: sweep stopped by SIGINT: 1 network(s) finished and kept" in err
    assert "run the same sweep again to continue" in err
    assert not (results / "smoke/hybrid-static/static-2.json").exists()
    code, out, err = cli(capsys, *sweep)
    assert code == 0 and "1 trained, 1 already done" in out, out + err


@pytest.mark.slow
def test_ctrl_c_stops_a_process_pool_sweep_within_seconds(workspace, tmp_path):
    """Workers ignore the terminal's SIGINT; the driver stops them, starts nothing more."""
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "dynroute.cli", "sweep", *SWEEP, "--workers", "2"]
    argv += ["--dataset", f"npz:{workspace / 'a.npz'}", "--runs", str(tmp_path / "runs")]
    argv += ["--results", str(results)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    driver = subprocess.Popen(
        argv, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(results.glob("smoke/*/*.json")):
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C: the whole group, workers too
        started = time.monotonic()
        _, err = driver.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        driver.kill()
    assert driver.returncode == 130, err
    assert took < 15, took
    assert "sweep stopped by SIGINT" in err and "Traceback" not in err
    assert "leaked" not in err  # the stopped workers released what they held
    done = len(list(results.glob("smoke/*/*.json")))
    assert done < 8
    time.sleep(0.5)
    finished = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{8 - done} trained, {done} already done" in finished.stdout


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_weights(workspace, tmp_path):
    data = f"npz:{workspace / 'a.npz'}"
    base = [sys.executable, "-m", "dynroute.cli", "train", "--dataset", data, "--no-progress"]
    base += ["--iterations", "40", "--batch-size", "8", "--checkpoint-every", "5"]
    base += ["--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole")], env=env, timeout=600)
    assert whole.returncode == 0
    killed = subprocess.Popen([*base, "--out", str(tmp_path / "killed")], env=env)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    while killed.poll() is None and not checkpoint.exists():
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    resumed = subprocess.run(
        [*base, "--out", str(tmp_path / "killed"), "--resume"], env=env, timeout=600
    )
    assert resumed.returncode == 0
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ predict stops at once
#: ``dynroute ARGV`` with a reader that blocks forever on ``block.png`` (as a read of a file
#: that never ends, or of a hung disk, would): it writes ``sys.argv[1]`` when it blocks.
_BLOCKING_READER = """
import pathlib, sys, threading
from dynroute.io import gate
real = gate.read_bytes
def read_bytes(path, limit=None):
    if pathlib.Path(path).name == "block.png":
        pathlib.Path(sys.argv[1]).write_text("blocked")
        threading.Event().wait()
    return real(path, limit)
gate.read_bytes = read_bytes
from dynroute.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from helpers.delivery import make_export

    return make_export(tmp_path_factory.mktemp("stops-export") / "chain")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_predict_stops_within_a_second_whatever_a_reader_is_doing(export, tmp_path, signum):
    from helpers.hostile import png

    for name in ("a.png", "block.png", "c.png"):
        (tmp_path / name).write_bytes(png(40))
    out = tmp_path / "rows.csv"
    out.write_text("the previous rows\n")
    marker = tmp_path / "blocked"
    argv = [sys.executable, "-c", _BLOCKING_READER, str(marker), "predict", str(export)]
    argv += [str(tmp_path / n) for n in ("a.png", "block.png", "c.png")]
    argv += ["--out", str(out), "--no-progress", "--readers", "2"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), command.stderr.read() if command.poll() is not None else ""
        time.sleep(0.2)
        command.send_signal(signum)
        started = time.monotonic()
        _, err = command.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        command.kill()
    assert command.returncode == 128 + signum, err
    assert took < 3, took  # generous: it takes a few hundredths
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == f"dynroute: interrupted ({name})"
    assert "Traceback" not in err
    assert out.read_text() == "the previous rows\n"
    assert not list(tmp_path.glob(".*.tmp"))
