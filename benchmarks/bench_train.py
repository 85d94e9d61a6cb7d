"""Training throughput: the hybrid actor chain vs a plain static 8-column net.

Both run the full training step of ``dynroute.train.Trainer`` (batch sampling,
augmentation, forward, loss, backward, TALR, SGD) at batch 128 on synthetic
images of the real shape, so the routing machinery's overhead is the ratio.
The two trainers take turns (``--rounds`` of ``--steps`` steps each) and the
overhead is the median over rounds, so a machine whose speed drifts over
seconds hits both alike. Not a test: it prints numbers with the machine
description.

    python benchmarks/bench_train.py [--rounds 8] [--steps 5] [--threads N] [--compile]
        [--compile-mode reduce-overhead] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from dynroute.data.datasets import DatasetSplit
from dynroute.data.loader import BatchLoader
from dynroute.devices import configure_cpu, machine_description, resolve_device
from dynroute.train.config import COMPILE_MODES, TrainConfig
from dynroute.train.data import Split, TrainingData
from dynroute.train.trainer import Trainer
from timing import median_speedup, peak_memory_mb, save_results


def synthetic_data(device: torch.device, n: int = 4096) -> TrainingData:
    rng = np.random.default_rng(0)
    images = rng.random((n, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, n)
    mirror = tuple(i >= 5 for i in range(10))
    split = DatasetSplit(images, labels, tuple(str(i) for i in range(10)), mirror)
    loader = BatchLoader(split, 128, seed=0, device=device)
    test = Split(torch.from_numpy(images[:256]), torch.from_numpy(labels[:256]))
    return TrainingData(loader, {"test": test}, 10)


def timed_steps(trainer: Trainer, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` full training steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per network per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="with --compile: reduce-overhead = CUDA graphs",
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    configure_cpu(args.threads)
    device = resolve_device(args.device)
    common = dict(
        iterations=100_000,
        device=args.device,
        compile=args.compile,
        compile_mode=args.compile_mode,
        bf16=args.bf16,
        channels_last=not args.no_channels_last,
        eval_every=10**9,
        checkpoint_every=10**9,
    )
    configs = {
        "static-8": TrainConfig(model="static-8", strategy="static", **common),
        "actor chain": TrainConfig(model="chain", strategy="actor", k_cpt=4e-9, **common),
    }
    warmup = args.warmup + (2 if args.compile else 0)
    results: dict[str, object] = {"machine": machine_description(), "options": vars(args)}
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            name: Trainer(config, synthetic_data(device), f"{out}/{i}", progress=False)
            for i, (name, config) in enumerate(configs.items())
        }
        for name, trainer in trainers.items():
            seconds = timed_steps(trainer, warmup, device)
            print(f"{name:<12} warm-up {warmup} steps (incl. compile): {seconds:.1f} s", flush=True)
            results[name] = {"warmup_seconds": seconds}
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                times[name].append(timed_steps(trainer, args.steps, device))
    images = args.steps * configs["static-8"].batch_size
    for name, record in times.items():
        results[name]["images_per_second"] = rate = images / statistics.median(record)
        results[name]["images_per_second_per_round"] = [images / t for t in record]
        spread = f"{images / max(record):.0f}-{images / min(record):.0f}"
        print(f"{name:<12} {rate:8.1f} img/s  (median of {args.rounds} rounds; range {spread})")
    results["routing_overhead"] = overhead = (
        median_speedup(times["actor chain"], times["static-8"]) - 1
    )
    print(f"routing machinery overhead: {100 * overhead:.1f} % (median over interleaved rounds)")
    results.update(peak_memory_mb(device))
    print("peak memory:", ", ".join(f"{k} {v:.0f}" for k, v in results.items() if "peak" in k))
    save_results(results, args.json)


if __name__ == "__main__":
    main()
