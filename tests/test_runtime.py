"""Device, thread and layout choices."""

from __future__ import annotations

import pytest
import torch

from dynroute import runtime
from dynroute.errors import DynrouteError


def test_workers_times_threads_never_exceed_cores(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert runtime.threads_per_worker(1) == 2
    assert runtime.threads_per_worker(2) == 1
    assert runtime.threads_per_worker(8) == 1
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert runtime.threads_per_worker(3) == 5


def test_configure_threads_defaults_to_every_core(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "available_cores", lambda: 1)
        assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
        assert runtime.configure_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resolve_device():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DynrouteError, match="no CUDA device"):
            runtime.resolve_device("cuda")
    with pytest.raises(DynrouteError, match="unknown device"):
        runtime.resolve_device("tpu")


def test_machine_description_is_plain_data():
    info = runtime.machine_description()
    assert info["cores"] >= 1 and info["torch"] == torch.__version__
