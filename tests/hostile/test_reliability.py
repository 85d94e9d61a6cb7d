"""Reliability as a user meets it (issue 37): every case runs the command line.

Hostile or odd data stays bounded (limits checked before allocating, reading or
expanding); runs are bound to the data they were trained on; one process writes a run
or a sweep's state at a time; Ctrl-C and SIGTERM stop cleanly; every file is written
whole or not at all (a full disk is a mocked ``OSError(ENOSPC)``). Each case asserts the
one-line message, the exit status and that what was there before is intact. The cases
that passed before the issue (tampered checkpoints, bad option values, SIGKILL and
resume) are kept here too, so they stay passing.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynroute import atomic
from dynroute.cli import main
from dynroute.data.readers import image_tree
from dynroute.runs import DATA_FILE

SRC = Path(__file__).resolve().parents[2] / "src"
TRAIN = ["--iterations", "2", "--batch-size", "8", "--no-progress", "--threads", "1"]
SWEEP = ["hybrid-static", "--scale", "smoke", "--no-progress"]


# ------------------------------------------------------------------ helpers
def arrays(classes: int = 3, seed: int = 0, train: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(train) % classes,
        "x_test": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(12) % classes,
    }


def write_npz(path: Path, **kwargs) -> str:
    np.savez(path, **arrays(**kwargs))
    return f"npz:{path}"


def png(value: int, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), count: int = 4) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (root / name / f"{index}.png").write_bytes(png(40 * label + 10 * index))
    return root


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``dynroute ARGV`` run in this process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one error line; nothing else on stderr looks like an error."""
    lines = [line for line in err.splitlines() if line.startswith("dynroute: error:")]
    assert len(lines) == 1, err
    return lines[0]


def refused(capsys, *argv: str, status: int = 2) -> str:
    code, _, err = cli(capsys, *argv)
    assert code == status, err
    return error_line(err)


def copy_run(workspace: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(workspace / name, tmp_path / name))


def fail_writes_to(monkeypatch, fragment: str, error: int = errno.ENOSPC, after: int = 0):
    """Make ``os.fsync`` fail with ``error`` for files whose path contains ``fragment`` (after
    ``after`` successful ones): what a full disk does to a write that was buffered."""
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if fragment in path:
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(error, os.strerror(error))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.fixture(scope="module")
def dataset_cache(tmp_path_factory) -> Path:
    """This module's dataset cache (never the user's)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, dataset_cache) -> Path:
    """Two runs trained once on a tiny npz: a routed chain (with a validation split) and a
    static network; tests copy them before changing anything."""
    root = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DYNROUTE_CACHE", str(dataset_cache))
        data = write_npz(root / "a.npz")
        routed = ["--out", root / "routed", "--validation-size", "6"]
        static = ["--out", root / "static", "--model", "static-1", "--strategy", "static"]
        for extra in (routed, static):
            assert main(["train", "--dataset", data, *map(str, extra), *TRAIN]) == 0
    return root


@pytest.fixture(autouse=True)
def _cache(dataset_cache, monkeypatch):
    monkeypatch.setenv("DYNROUTE_CACHE", str(dataset_cache))


@pytest.fixture
def deadline():
    """Fail (not hang) a test whose command blocks, e.g. on a FIFO."""

    def expired(signum, frame):
        raise TimeoutError("the command blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ hostile data
def test_huge_label_is_refused_before_allocating(tmp_path, capsys):
    values = arrays()
    values["y_train"][0] = 10**12
    np.savez(tmp_path / "x.npz", **values)
    line = refused(capsys, "data", "info", f"npz:{tmp_path / 'x.npz'}")
    assert "label 1000000000000 is too large" in line and "MAX_CLASSES" in line


def test_compressed_npz_bomb_is_refused_before_expanding(tmp_path, capsys):
    values = arrays()
    values["x_train"] = np.zeros((30_000, 32, 32, 3), dtype=np.uint8)  # 92 MB of zeros
    values["y_train"] = np.arange(30_000) % 3
    np.savez_compressed(tmp_path / "bomb.npz", **values)
    assert (tmp_path / "bomb.npz").stat().st_size < 1 << 20
    line = refused(capsys, "data", "info", f"npz:{tmp_path / 'bomb.npz'}")
    assert "x_train expands to 92160128 bytes" in line and "MAX_EXPANSION_RATIO" in line


def _forged_npz(path: Path) -> None:
    """x_train's header claims 10^8 images (307 GB); its data is a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**8, 32, 32, 3)}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + b"\0" * 64)
        for name, value in arrays().items():
            if name != "x_train":
                buffer = io.BytesIO()
                np.save(buffer, value)
                archive.writestr(f"{name}.npy", buffer.getvalue())


def test_forged_array_header_is_refused_under_a_memory_limit(tmp_path):
    """In a process limited to 1 GiB of address space: refused by the numbers, no MemoryError."""
    _forged_npz(tmp_path / "forged.npz")
    limit = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "from dynroute.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "DYNROUTE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", limit, "data", "info", f"npz:{tmp_path / 'forged.npz'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr)
    assert "declares shape (100000000, 32, 32, 3)" in line and "holds only" in line


def test_zip_bomb_in_an_image_zip_is_refused_before_expanding(tmp_path, capsys):
    path = tmp_path / "pets.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("cat", "dog"):
            for index in range(3):
                archive.writestr(f"{name}/{index}.png", png(index))
        archive.writestr("cat/huge.png", bytes(40 << 20))  # 40 MB of zeros, ~40 kB stored
    assert path.stat().st_size < 1 << 20
    line = refused(capsys, "data", "info", f"folder:{path}")
    assert "cat/huge.png expands to 41943040 bytes" in line and "MAX_EXPANSION_RATIO" in line


def test_sparse_file_in_an_image_folder_is_refused_by_size(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    with open(root / "b" / "big.png", "wb") as handle:
        handle.truncate(3 << 30)  # 3 GB long, nothing on disk
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert "big.png is a sparse file: 3221225472 bytes long" in line


def test_oversized_image_file_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    root = image_folder(tmp_path / "pets")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "a" / "noise.png")
    size = (root / "a" / "noise.png").stat().st_size
    monkeypatch.setattr(image_tree, "MAX_IMAGE_FILE_BYTES", 4096)
    read = []
    monkeypatch.setattr(image_tree._FolderTree, "read", lambda self, entry: read.append(entry))
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert f"noise.png holds {size} bytes, more than the limit of 4096" in line
    assert read == []  # refused while listing, before any image was read


def test_fifos_and_devices_in_an_image_folder_are_skipped_by_name(
    tmp_path, capsys, caplog, deadline
):
    root = image_folder(tmp_path / "pets")
    os.mkfifo(root / "a" / "pipe.png")  # opening it would block forever
    (root / "b" / "null.png").symlink_to("/dev/null")
    code, out, err = cli(capsys, "data", "info", f"folder:{root}")
    assert code == 0, err
    warned = caplog.text  # on stderr outside pytest
    assert "skipped 2 file(s) that are not regular files, never opened" in warned
    assert "a/pipe.png (a named pipe (FIFO))" in warned
    assert "b/null.png (a character device)" in warned
    assert "2 classes" in out


def test_a_fifo_given_as_the_data_is_refused_without_opening_it(tmp_path, capsys, deadline):
    os.mkfifo(tmp_path / "data.npz")
    os.mkfifo(tmp_path / "data.zip")
    for name in (f"npz:{tmp_path / 'data.npz'}", f"folder:{tmp_path / 'data.zip'}"):
        line = refused(capsys, "data", "info", name)
        assert "is a named pipe (FIFO), not a regular file; it is never opened" in line


def test_a_folder_name_that_is_not_utf8_is_a_clean_message(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    bad = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(bad)
    for index in range(3):
        with open(os.path.join(bad, b"%d.png" % index), "wb") as handle:
            handle.write(png(index))
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert "the name b'caf\\xe9' is not valid UTF-8; rename it" in line


def test_a_gzip_bomb_posing_as_mnist_is_stopped(tmp_path, capsys, make_mnist):
    folder = make_mnist(tmp_path / "raw")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(40 << 20)))
    line = refused(capsys, "data", "info", "mnist", "--data-dir", tmp_path / "raw")
    assert "train-labels-idx1-ubyte.gz expands to more than" in line


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


# ------------------------------------------------------------------ one writer per folder
def _hold_lock(folder: Path, doing: str) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a running trainer or sweep would."""
    code = (
        "import sys, time; from dynroute.atomic import FolderLock; "
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
    code, out, _ = cli(capsys, *sweep)
    assert code == 0 and "1 trained, 1 already done" in out


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
        assert "--target-macs: must be a positive, finite number" in line
    assert not (run / "calibration.json").exists()
    with pytest.raises(atomic.DynrouteError, match="not finite"):
        atomic.write_json_atomic(tmp_path / "x.json", {"accuracy": float("nan")})
    assert not (tmp_path / "x.json").exists()


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "hybrid", "--out", "x", "--iterations", "0"], "--iterations must"),
        (["train", "--dataset", "hybrid", "--out", "x", "--lr", "nan"], "--lr must be"),
        (["train", "--dataset", "csv:x", "--out", "x"], "unknown dataset prefix 'csv:'"),
        (["evaluate", "RUN", "--policy", "confidence", "--threshold", "2"], "--threshold"),
        (["sweep", *SWEEP, "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_option_values_are_refused_in_one_line(workspace, capsys, argv, message):
    argv = [str(workspace / "routed") if a == "RUN" else a for a in argv]
    assert message in refused(capsys, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "RUN", "--k-cpt", "inf"],
        ["evaluate", "RUN", "--k-cpt", "-1"],
        ["calibrate", "RUN", "--k-cpt", "nan", "--target-macs", "3"],
        ["calibrate", "RUN", "--target-accuracy", "1.5"],
        ["export", "RUN", "--out", "x", "--k-cpt", "-5"],
        ["predict", "RUN", "x.png", "--k-cpt", "1e300"],
        ["serve", "RUN", "--target-macs", "nan"],
        ["train", "--out", "x", "--threads", "0"],
    ],
)
def test_bad_values_are_refused_by_the_parser(workspace, capsys, argv):
    argv = [str(workspace / "routed") if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("dynroute ")
    assert "Traceback" not in err


def test_an_official_copy_is_the_same_data_in_any_layout(tmp_path, make_mnist):
    from dynroute.data import load_dataset

    make_mnist(tmp_path / "gz", gz=True)
    make_mnist(tmp_path / "plain", gz=False)
    a = load_dataset("mnist", tmp_path / "gz", cache_dir=tmp_path / "cache-a")
    b = load_dataset("mnist", tmp_path / "plain", cache_dir=tmp_path / "cache-b")
    assert a.fingerprint == b.fingerprint and a.content_fingerprint == b.content_fingerprint
