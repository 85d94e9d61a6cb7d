"""Helpers of the hostile-input tests: tiny datasets, the command line in-process, and a
full disk on demand."""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from dynroute.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
TRAIN = ["--iterations", "2", "--batch-size", "8", "--no-progress", "--threads", "1"]
SWEEP = ["hybrid-static", "--scale", "smoke", "--no-progress"]


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
