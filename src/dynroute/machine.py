"""Facts about the machine that need no torch: the cores this process may use.

Shared by the torch side (``dynroute.devices``: threads per training worker) and the
torch-free export runtime (``dynroute.deploy``: onnxruntime's threads).
"""

from __future__ import annotations

import os


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
