"""Wall-clock helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall-clock of one call, synchronising CUDA so queued kernels are counted."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_seconds(
    runs: list[Callable[[], object]], repeats: int, device: torch.device
) -> list[list[float]]:
    """Wall-clock of each run, ``repeats`` times, interleaved so load drift hits all alike."""
    for run in runs:  # warm-up
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, record in zip(runs, times, strict=True):
            record.append(seconds(run, device))
    return times


def median_speedup(base: list[float], other: list[float]) -> float:
    """Median of ``base / other`` over interleaved pairs.

    On a shared machine whose speed drifts by tens of percent over seconds, the
    two runs of one pair see the same conditions; a ratio of medians mixes them.
    """
    return statistics.median(b / o for b, o in zip(base, other, strict=True))


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory."""
    import resource

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def save_results(results: dict, path: str | None) -> None:
    """Print the machine the numbers came from and, if asked, write them all as JSON."""
    print("machine:", json.dumps(results["machine"]))
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n")
