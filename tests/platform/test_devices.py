"""Device, thread and layout choices."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import torch

from dynroute.core.errors import DynrouteError
from dynroute.platform import devices, machine


def test_workers_times_threads_never_exceed_cores(monkeypatch):
    monkeypatch.setattr(machine, "available_cores", lambda: 2)
    assert machine.threads_per_worker(1) == 2
    assert machine.threads_per_worker(2) == 1
    assert machine.threads_per_worker(8) == 1
    monkeypatch.setattr(machine, "available_cores", lambda: 16)
    assert machine.threads_per_worker(3) == 5


def test_configure_cpu_defaults_to_every_core(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(machine, "available_cores", lambda: 1)
        assert devices.configure_cpu() == 1 and torch.get_num_threads() == 1
        assert devices.configure_cpu(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bf16_on_a_cpu_goes_channels_last_only_with_amx_tiles(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert devices.use_channels_last(cpu) and not devices.use_channels_last(cpu, bf16=True)
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert devices.use_channels_last(cpu) and devices.use_channels_last(cpu, bf16=True)


def test_resolve_device():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert devices.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DynrouteError, match="no CUDA device"):
            devices.resolve_device("cuda")
    with pytest.raises(DynrouteError, match="unknown device"):
        devices.resolve_device("tpu")


def test_machine_description_is_plain_data():
    info = devices.machine_description()
    assert json.loads(json.dumps(info)) == info  # stored in result files as it is
    assert info["cores"] == machine.available_cores()
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__
    assert info["platform"] == platform.platform()
    if Path("/proc/cpuinfo").exists():
        assert info["cpu"]  # the processor's model name, next to every measured number


def test_keep_freed_memory_stops_page_faults_in_repeated_forward_passes(monkeypatch):
    """After warm-up, a forward pass reuses freed activation buffers instead of faulting
    fresh pages in (without the setting: ~5,000 page faults per pass of this size)."""
    import resource

    from dynroute.nn.models import build_model

    monkeypatch.setenv("DYNROUTE_KEEP_FREED_MEMORY", "0")
    assert devices.keep_freed_memory() is False
    monkeypatch.delenv("DYNROUTE_KEEP_FREED_MEMORY")
    applied = devices.keep_freed_memory()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert applied is False
        return
    assert applied is True
    torch.manual_seed(0)
    model = build_model("static-2").eval()
    x = torch.randn(128, 3, 32, 32)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            model(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 3000, faults  # fresh buffers every pass: 20,000+
