"""Throughput of the training augmentation (shift + mean fill + flip) and of BatchLoader.

Run: python benchmarks/bench_augment.py [--batch-size 128] [--seconds 3]
Uses random images, so no dataset is needed; prints the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from dynroute.data.augment import augment_batch
from dynroute.data.datasets import DatasetSplit
from dynroute.data.loader import BatchLoader
from dynroute.platform.devices import configure_cpu


def images_per_second(step: Callable[[], object], batch_size: int, seconds: float) -> float:
    """Repeat ``step`` for about ``seconds`` after a short warm-up; report images/s."""
    for _ in range(5):
        step()
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        step()
        count += 1
    return count * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    configure_cpu(args.threads)

    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    rng = np.random.default_rng(0)
    images = rng.random((args.examples, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, args.examples)
    mirror = tuple(bool(i >= 5) for i in range(10))  # hybrid-like: half the classes flip

    batch = torch.from_numpy(images[: args.batch_size].copy())
    batch_labels = torch.from_numpy(labels[: args.batch_size])
    generator = torch.Generator().manual_seed(0)
    rate = images_per_second(
        lambda: augment_batch(batch, batch_labels, mirror, generator),
        args.batch_size,
        args.seconds,
    )
    print(f"augment_batch only, batch {args.batch_size}: {rate:,.0f} images/s")

    loader = BatchLoader(DatasetSplit(images, labels, tuple("abcdefghij"), mirror), args.batch_size)
    rate = images_per_second(loader.next_batch, args.batch_size, args.seconds)
    print(
        f"BatchLoader.next_batch (sample + gather + augment), batch {args.batch_size}: "
        f"{rate:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
