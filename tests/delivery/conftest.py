"""Fixtures of the delivery tests: an export of a scrambled chain, and a trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers.delivery import make_export
from helpers.small_run import small_run  # noqa: F401  (a fixture)


@pytest.fixture(scope="session")
def export(tmp_path_factory) -> Path:
    """The chain at 16 px with random routers, exported with class names and preprocessing."""
    return make_export(tmp_path_factory.mktemp("export") / "chain")


@pytest.fixture(scope="session")
def trained(small_run, tmp_path_factory) -> dict[str, Path]:  # noqa: F811  (the fixture)
    """The tiny trained run (a chain on coloured images, an npz dataset with a validation
    split), and copies calibrated to the budgeted and the ensemble policy."""
    from dynroute.policies.calibration import calibrate

    root = tmp_path_factory.mktemp("trained")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DYNROUTE_CACHE", str(small_run.parent / "cache"))
        for name in ("plain", "budgeted", "ensemble"):
            runs[name] = Path(shutil.copytree(small_run, root / name))
            if name != "plain":
                calibrate(runs[name], target_macs=1.5e6, policy=name)
        yield runs
