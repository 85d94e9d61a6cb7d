"""Fixtures of the delivery tests: an export of a scrambled chain, and a trained run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from dynroute.cli import main
from helpers.delivery import CLASSES, SIZE, coloured, make_export


@pytest.fixture(scope="session")
def export(tmp_path_factory) -> Path:
    """The chain at 16 px with random routers, exported with class names and preprocessing."""
    return make_export(tmp_path_factory.mktemp("export") / "chain")


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A chain trained a little on coloured images (an npz dataset with a validation split),
    and copies calibrated to the budgeted and the ensemble policy."""
    from dynroute.policies.calibration import calibrate

    root = tmp_path_factory.mktemp("trained")
    x_train, y_train = coloured(300, 0)
    x_test, y_test = coloured(90, 1)
    npz = root / "colours.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(CLASSES))  # fmt: skip
    runs = {"plain": root / "run"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DYNROUTE_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", f"npz:{npz}", "--image-size", str(SIZE),
                     "--iterations", "30", "--batch-size", "32", "--validation-size", "60",
                     "--eval-every", "30", "--strategy", "multi-exit", "--threads", "1",
                     "--no-progress", "--out", str(runs["plain"])])  # fmt: skip
        assert code == 0
        for policy in ("budgeted", "ensemble"):
            runs[policy] = root / policy
            subprocess.run(["cp", "-r", str(runs["plain"]), str(runs[policy])], check=True)
            calibrate(runs[policy], target_macs=1.5e6, policy=policy)
        yield runs
