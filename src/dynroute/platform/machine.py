"""Facts about the machine that need no torch: the cores this process may use, its
open-files limit and memory (Linux ``/proc``, where there is one), and the kernel's promise
to stop a child when its parent dies.

Shared by the torch side (``dynroute.platform.devices``: threads per training worker), the
torch-free export runtime (``dynroute.deploy``: onnxruntime's threads) and the server
(``dynroute.delivery.serve``: workers, connections, memory).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. in containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int) -> int:
    """Threads for each of ``workers`` processes so they never oversubscribe the cores.

    Oversubscribed OpenMP threads spin on barriers while their siblings wait for a core;
    on a 2-core machine that makes convolutions many times slower, not a little.
    """
    return max(1, available_cores() // max(1, workers))


def open_files_limit() -> int:
    """The soft limit on this process's open files (``ulimit -n``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _proc_field(path: str, field: str) -> int | None:
    """A ``kB`` field of a ``/proc`` file, in bytes; None where it cannot be read."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory."""
    return _proc_field(f"/proc/{pid}/status", "VmRSS:")


def available_memory() -> int | None:
    """Memory the kernel could give processes now without swapping."""
    return _proc_field("/proc/meminfo", "MemAvailable:")


def stop_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send this process ``signum`` when its parent dies (Linux), so that
    no worker or decoding process outlives a supervisor killed with SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # PR_SET_PDEATHSIG


#: CPU flags of native bfloat16 arithmetic (AVX-512 BF16 dot products, AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags of native int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX int8).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively: without it bf16 is emulated, slower
    than float32, and dynroute says so and stays in float32."""
    return bool(cpu_flags() & set(BF16_FLAGS))


def amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in AMX tiles: there oneDNN's bf16
    convolutions are fastest channels-last; with AVX-512 BF16 alone, NCHW."""
    return "amx_bf16" in cpu_flags()


def native_int8() -> bool:
    """Whether this CPU has int8 dot-product instructions (what int8 exports need to pay)."""
    return bool(cpu_flags() & set(INT8_FLAGS))
