"""Training throughput: the hybrid actor chain vs a plain static 8-column net.

Both run the full training step of ``dynroute.train.Trainer`` (batch sampling,
augmentation, forward, loss, backward, TALR, SGD) at batch 128 on synthetic
images of the real shape, so the routing machinery's overhead is the ratio.
Not a test: it prints numbers with the machine description.

    python benchmarks/bench_train.py [--steps 20] [--threads N] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from dynroute.data.datasets import DatasetSplit
from dynroute.data.loader import BatchLoader
from dynroute.runtime import configure_threads, machine_description, resolve_device
from dynroute.train.config import TrainConfig
from dynroute.train.trainer import Split, Trainer, TrainingData
from timing import peak_memory_mb


def synthetic_data(device: torch.device, n: int = 4096) -> TrainingData:
    rng = np.random.default_rng(0)
    images = rng.random((n, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, n)
    mirror = tuple(i >= 5 for i in range(10))
    split = DatasetSplit(images, labels, tuple(str(i) for i in range(10)), mirror)
    loader = BatchLoader(split, 128, seed=0, device=device)
    test = Split(torch.from_numpy(images[:256]), torch.from_numpy(labels[:256]))
    return TrainingData(loader, {"test": test}, 10)


def measure(config: TrainConfig, steps: int, warmup: int) -> dict[str, float]:
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, synthetic_data(device), out, progress=False)
        started = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        warm = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {
        "images_per_second": steps * config.batch_size / seconds,
        "warmup_seconds": warm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    configure_threads(args.threads)
    common = dict(
        iterations=100_000,
        device=args.device,
        compile=args.compile,
        bf16=args.bf16,
        channels_last=not args.no_channels_last,
        eval_every=10**9,
        checkpoint_every=10**9,
    )
    warmup = args.warmup + (2 if args.compile else 0)
    results = {"machine": machine_description(), "options": vars(args)}
    for name, config in [
        ("static-8", TrainConfig(model="static-8", strategy="static", **common)),
        ("actor chain", TrainConfig(model="chain", strategy="actor", k_cpt=4e-9, **common)),
        ("static-8 again", TrainConfig(model="static-8", strategy="static", **common)),
        ("actor chain again", TrainConfig(model="chain", strategy="actor", k_cpt=4e-9, **common)),
    ]:
        results[name] = measure(config, args.steps, warmup)
        print(
            f"{name:<18} {results[name]['images_per_second']:8.1f} img/s"
            f"   (warm-up {warmup} steps incl. compile: {results[name]['warmup_seconds']:.1f} s)",
            flush=True,
        )
    static = max(
        results["static-8"]["images_per_second"], results["static-8 again"]["images_per_second"]
    )
    actor = max(
        results["actor chain"]["images_per_second"],
        results["actor chain again"]["images_per_second"],
    )
    results["routing_overhead"] = static / actor - 1
    results.update(peak_memory_mb(resolve_device(args.device)))
    print(f"best static-8 {static:.1f} img/s, best actor chain {actor:.1f} img/s")
    print(f"routing machinery overhead: {100 * results['routing_overhead']:.1f} %")
    print("peak memory:", ", ".join(f"{k} {v:.0f}" for k, v in results.items() if "peak" in k))
    print("machine:", json.dumps(results["machine"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
