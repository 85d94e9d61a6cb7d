"""Training throughput: the hybrid actor chain vs a plain static 8-column net, in float32
and in bfloat16, and against a naive eager PyTorch reference.

Every dynroute variant runs the full training step of ``dynroute.train.Trainer`` (batch
sampling, augmentation, forward, loss, backward, TALR, SGD) at batch 128 on synthetic
images of the real shape, so the routing machinery's overhead is the actor/static ratio.
The naive reference is the same chain and actor loss written the plain way: float32 NCHW,
per-node Python loops for the loss and the L2 term, unfused SGD, no TALR. Every variant
takes turns (``--rounds`` of ``--steps`` steps each) and each ratio is the median over
rounds, so a machine whose speed drifts over seconds hits all alike. bfloat16 runs only on
a CPU with native bf16 instructions (or CUDA). Not a test: it prints numbers with the
machine description.

    python benchmarks/bench_train.py [--rounds 8] [--steps 5] [--threads N] [--compile]
        [--compile-mode reduce-overhead] [--device cpu] [--no-bf16] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from dynroute.data.datasets import DatasetSplit
from dynroute.data.loader import BatchLoader
from dynroute.platform.devices import bf16_on, configure_cpu, machine_description, resolve_device
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


class NaiveActor:
    """The actor chain's training step written the plain way (module docstring): what a
    researcher would write without dynroute, the baseline its speed is held against."""

    def __init__(self, data: TrainingData, device: torch.device) -> None:
        from dynroute.nn.macs import tree_costs
        from dynroute.nn.models import build_model

        torch.manual_seed(0)
        self.tree = build_model("chain").to(device)
        self.data, self.device = data, device
        self.macs = [float(m) for m in tree_costs(self.tree).node_macs]
        self.optimizer = torch.optim.SGD(
            self.tree.parameters(), lr=0.01, momentum=0.9, foreach=False
        )

    def train_step(self) -> None:
        import torch.nn.functional as F

        tree = self.tree
        images, labels = self.data.loader.next_batch()
        tree.train()
        out = tree.forward_dense(images)
        arrival = [torch.ones(len(labels), device=images.device)]
        for i in range(1, len(tree.nodes)):
            p, k = tree.parent[i], tree.branch[i]
            if p in out.scores:
                probs = 0.5 * torch.softmax(out.scores[p], dim=1) + 0.5 / out.scores[p].shape[1]
                arrival.append(arrival[p] * probs[:, k])
            else:
                arrival.append(arrival[p])
        loss = torch.zeros(len(labels), device=images.device)
        for leaf in tree.leaves:
            loss = loss + arrival[leaf] * F.cross_entropy(
                out.logits[leaf], labels, reduction="none"
            )
        for i, node in enumerate(tree.nodes):
            loss = loss + 4e-9 * self.macs[i] * arrival[i]
            squares = sum(w.pow(2).sum() for w in node.own_parameters() if w.dim() > 1)
            loss = loss + 1e-4 * arrival[i].detach() * squares
        for j, scores in out.scores.items():
            loss = loss + 0.01 * arrival[j].detach() * scores.pow(2).sum(dim=1)
        self.optimizer.zero_grad()
        loss.mean().backward()
        self.optimizer.step()


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
    parser.add_argument("--no-bf16", action="store_true", help="float32 variants only")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    configure_cpu(args.threads)
    device = resolve_device(args.device)
    common = dict(
        iterations=100_000,
        device=args.device,
        compile=args.compile,
        compile_mode=args.compile_mode,
        channels_last=not args.no_channels_last,
        eval_every=10**9,
        checkpoint_every=10**9,
    )
    precisions = [False] if args.no_bf16 or not bf16_on(device, True, warn=False) else [False, True]
    configs: dict[str, TrainConfig] = {}
    for bf16 in precisions:
        tag = " bf16" if bf16 else ""
        configs[f"static-8{tag}"] = TrainConfig(
            model="static-8", strategy="static", bf16=bf16, **common
        )
        configs[f"actor chain{tag}"] = TrainConfig(
            model="chain", strategy="actor", k_cpt=4e-9, bf16=bf16, **common
        )
    warmup = args.warmup + (2 if args.compile else 0)
    results: dict[str, object] = {"machine": machine_description(), "options": vars(args)}
    with tempfile.TemporaryDirectory() as out:
        trainers: dict[str, Any] = {
            name: Trainer(config, synthetic_data(device), f"{out}/{i}", progress=False)
            for i, (name, config) in enumerate(configs.items())
        }
        trainers["naive reference"] = NaiveActor(synthetic_data(device), device)
        for name, trainer in trainers.items():
            seconds = timed_steps(trainer, warmup, device)
            print(f"{name:<18} warm-up {warmup} steps (incl. compile): {seconds:.1f} s", flush=True)
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
        print(f"{name:<18} {rate:8.1f} img/s  (median of {args.rounds} rounds; range {spread})")
    ratios = {
        "routing overhead, float32 (actor / static-8 step time - 1)": ("actor chain", "static-8"),
        "routing overhead, bf16": ("actor chain bf16", "static-8 bf16"),
        "actor chain: float32 over the naive reference": ("naive reference", "actor chain"),
        "actor chain: bf16 over the naive reference": ("naive reference", "actor chain bf16"),
        "actor chain: bf16 over float32": ("actor chain", "actor chain bf16"),
    }
    results["ratios"] = {}
    for title, (slow, fast) in ratios.items():  # time of ``slow`` over time of ``fast``
        if slow not in times or fast not in times:
            continue
        ratio = median_speedup(times[slow], times[fast])
        if title.startswith("routing overhead"):  # the time ratio, less one
            value = ratio - 1
            text = f"{100 * value:+.1f} %"
        else:
            value = ratio
            text = f"{ratio:.2f}x  " + "#" * round(10 * ratio)
        results["ratios"][title] = value
        print(f"{title:<58} {text}")
    results.update(peak_memory_mb(device))
    print("peak memory:", ", ".join(f"{k} {v:.0f}" for k, v in results.items() if "peak" in k))
    save_results(results, args.json)


if __name__ == "__main__":
    main()
