"""Where and how computation runs: device choice, CPU threads, memory layout.

Engineering shared by training, evaluation, sweeps and benchmarks, kept apart
from the science in ``nn`` and ``train``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

from dynroute.core.errors import DynrouteError
from dynroute.platform import machine


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DynrouteError("`device` cuda was asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DynrouteError(f"unknown device {name!r}: {exc}") from None


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without stalling a GPU's queue.

    A plain ``.to("cuda")`` from pageable memory waits for all queued GPU work
    first; staging through pinned memory and copying asynchronously does not.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def configure_cpu(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: every available core) and keep freed
    buffers for reuse (``keep_freed_memory``); returns the thread count."""
    count = threads or machine.available_cores()
    torch.set_num_threads(count)
    keep_freed_memory()
    return count


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory() -> bool:
    """Make glibc keep large freed buffers in the heap; returns whether it applied.

    Every training step and inference batch frees and re-allocates the same
    multi-MB activation buffers. Above glibc's mmap threshold each one is a
    fresh mapping whose pages fault in again on first touch: 2,000-9,000 page
    faults per step on the hybrid chain, 10-15 % of a CPU training step.
    Raising the mmap and trim thresholds lets malloc reuse the buffers instead.
    Freed memory then stays with the process (peak RSS is kept, not returned).
    Linux with glibc only; ``DYNROUTE_KEEP_FREED_MEMORY=0`` turns it off.
    """
    if os.environ.get("DYNROUTE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc without the usual soname
        return False
    trimmed = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1
    # Older glibc caps the mmap threshold at 32 MiB (64-bit); ask for more, settle for that.
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) == 1 or (
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX) == 1
    )
    return trimmed and mapped


def use_channels_last(device: torch.device, bf16: bool = False) -> bool:
    """Channels-last convolutions are ~1.4x faster on CPU (oneDNN) and on tensor cores.
    bfloat16 on a CPU depends on the instructions: with AMX tiles channels-last is the fast
    layout (``benchmarks/bench_train.py``), with AVX-512 BF16 alone oneDNN's channels-last
    bf16 convolutions are many times slower than NCHW ones, so there bf16 keeps NCHW."""
    if bf16 and device.type == "cpu":
        return machine.amx_bf16()
    return device.type in ("cpu", "cuda")


def bf16_on(device: torch.device, asked: bool, warn: bool = True) -> bool:
    """Whether to compute in bfloat16: asked for, and on CUDA or on a CPU that computes it
    natively (``machine.native_bf16``); elsewhere one warning line says it stays float32."""
    if not asked:
        return False
    if device.type == "cuda" or (device.type == "cpu" and machine.native_bf16()):
        return True
    if warn:
        print(
            f"dynroute: warning: bf16 asked for on a {device.type} without native bfloat16 "
            "instructions (avx512_bf16 or amx_bf16): computing in float32",
            file=sys.stderr,
        )
    return False


def machine_description() -> dict[str, object]:
    """Plain facts to store next to any measured number."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": machine.available_cores(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
