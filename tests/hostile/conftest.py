"""Fixtures of the hostile-input tests: a dataset cache of their own, and two tiny runs
trained once (tests copy them before changing anything)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dynroute.cli import main
from helpers.hostile import TRAIN, write_npz


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory) -> Path:
    """This module's dataset cache (never the user's)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
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
