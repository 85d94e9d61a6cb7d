"""A tiny trained run with a validation split, for the policy science and the studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynroute.cli import main
from helpers.delivery import CLASSES, SIZE, coloured


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A multi-exit chain trained a little on coloured images (60 held out for validation);
    tests copy it before calibrating it."""
    root = tmp_path_factory.mktemp("small-run")
    x_train, y_train = coloured(300, 0)
    x_test, y_test = coloured(90, 1)
    npz = root / "colours.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(CLASSES))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DYNROUTE_CACHE", str(root / "cache"))
        assert main(["train", "--dataset", f"npz:{npz}", "--image-size", str(SIZE),
                     "--iterations", "30", "--batch-size", "32", "--validation-size", "60",
                     "--eval-every", "30", "--strategy", "multi-exit", "--threads", "1",
                     "--no-progress", "--out", str(root / "run")]) == 0  # fmt: skip
    return root / "run"


@pytest.fixture
def run_copy(small_run: Path, tmp_path: Path, monkeypatch) -> Path:
    import shutil

    monkeypatch.setenv("DYNROUTE_CACHE", str(small_run.parent / "cache"))
    return Path(shutil.copytree(small_run, tmp_path / "run"))
