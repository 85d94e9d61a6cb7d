"""Inference at trained operating points: the early-exit engine vs static-8.

Loads trained routed networks (run directories or checkpoints), routes real
test images with each, and times its engine against the static 8-column net
(the same convolutions, run densely) at batch 256 and batch 1. Prints the
wall-clock ratio next to the MAC ratio; the issue's target is a wall-clock
speed-up of at least 80 % of the MAC ratio at batch 256, and above 1 at batch 1.
The wall-clock ratio is the median over interleaved (static, engine) pairs.

    python benchmarks/bench_inference.py runs/quick/hybrid-actor/k_cpt-4e-09 [RUN ...]
        [--threads N] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from dynroute.data.datasets import load_dataset
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.engine.fold import fold_batchnorm
from dynroute.nn import checkpoint
from dynroute.nn.macs import tree_costs
from dynroute.nn.models import build_model
from dynroute.nn.tree import RoutedTree
from dynroute.platform.devices import configure_cpu, machine_description, resolve_device
from timing import interleaved_seconds, median_speedup, peak_memory_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="run directories or checkpoints of trained routed networks"
    )
    parser.add_argument("--dataset", default=None, help="default: the first run's dataset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--images", type=int, default=2048, help="test images (a seeded random sample) timed"
    )
    parser.add_argument("--singles", type=int, default=64, help="images timed one by one")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--k-cpt", type=float, default=None, help="for dynamic-k_cpt networks")
    parser.add_argument(
        "--no-fold", dest="fold", action="store_false", help="keep batch norms unfolded"
    )
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    configure_cpu(args.threads)
    device = resolve_device(args.device)
    configs = [_run_config(Path(run)) for run in args.runs]
    data = load_dataset(args.dataset or configs[0].get("dataset", "hybrid"))
    # A seeded random sample: the test split is stored source by source (hybrid: all digits
    # first), so its first images would time one kind of input only.
    pick = np.random.default_rng(0).permutation(len(data.test))[: args.images]
    images = torch.from_numpy(np.array(data.test.images[pick])).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    results: dict[str, object] = {
        "machine": machine_description(),
        "batchnorm_folded": args.fold,
        "repeats": args.repeats,
        "runs": {},
    }
    print(f"machine: {json.dumps(results['machine'])}")
    baselines: dict[tuple[int, int], tuple[RoutedTree, list[float]]] = {}
    for run, config in zip(args.runs, configs, strict=True):
        path = Path(run)
        tree = checkpoint.load_model(path / "checkpoint.pt" if path.is_dir() else path, device)
        engine = EarlyExitEngine(tree, channels_last=True, fold_batchnorm=args.fold)
        shape = (tree.num_classes, int(tree.spec.get("width", 1)))
        if shape not in baselines:  # static-8 of the same classes and width, timed per column
            static = build_model("static-8", *shape).to(device).eval()
            static.to(memory_format=torch.channels_last)
            if args.fold:  # the same inference preparation for both networks
                fold_batchnorm(static)
            column_s = _column_seconds(static, images[:256], args.repeats, device)
            baselines[shape] = static, column_s
            results[f"static_columns_classes{shape[0]}_width{shape[1]}"] = columns = [
                {"macs": macs, "ms_per_256": 1e3 * t, "gmacs_per_second": 256 * macs / t / 1e9}
                for macs, t in zip(tree_costs(static).node_macs[:-1], column_s, strict=True)
            ]
            gmacs = "  ".join(f"{c['gmacs_per_second']:.0f}" for c in columns)
            print(
                f"static-8, {shape[0]} classes, width {shape[1]}: GMAC/s of each column at "
                f"batch 256 (the early ones do fewer MACs per second): {gmacs}"
            )
            print(f"{'run':<40}{'batch':>6}{'static-8 img/s':>16}{'engine img/s':>14}"
                  f"{'wall ratio':>12}{'MAC ratio':>11}{'wall/MAC':>10}{'ideal':>7}")  # fmt: skip
        static, column_s = baselines[shape]
        static_macs = tree_costs(static).path_macs[static.leaves[0]]
        with torch.inference_mode():
            exits = torch.cat([engine(x, args.k_cpt).exits for x in images.split(256)])
        ideal = _ideal_speedup(tree, exits, column_s)
        rows: dict[str, object] = {"ideal_wall_clock_ratio": ideal}
        for batch, count in ((256, args.images), (1, args.singles)):
            rows[f"batch_{batch}"] = row = _time_batch(
                engine, static, images[:count], batch, args.k_cpt, args.repeats, device
            )
            row["mac_ratio"] = static_macs / row["engine_mean_macs"]
            print(f"{run[-40:]:<40}{batch:>6}{row['static_images_per_second']:>16.1f}"
                  f"{row['engine_images_per_second']:>14.1f}{row['wall_clock_ratio']:>12.2f}"
                  f"{row['mac_ratio']:>11.2f}"
                  f"{row['wall_clock_ratio'] / row['mac_ratio']:>10.2f}"
                  f"{f'{ideal:.2f}' if batch == 256 else '':>7}", flush=True)  # fmt: skip
        results["runs"][run] = {"k_cpt": config.get("k_cpt"), **rows}
    print("ideal: the wall ratio if routing and compaction cost nothing (static-8's column")
    print("times at batch 256, weighted by the share of examples that reach each column)")
    results.update(peak_memory_mb(device))
    print("peak memory:", ", ".join(f"{k} {v:.0f}" for k, v in results.items() if "peak" in k))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _run_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text()) if path.is_dir() else {}


def _column_seconds(
    static: RoutedTree, x: torch.Tensor, repeats: int, device: torch.device
) -> list[float]:
    """Median wall-clock of each static-8 column on the batch ``x``, timed one by one."""
    signals = [x]
    with torch.inference_mode():
        for node in static.nodes[:-1]:
            signals.append(node.transform(signals[-1]))
        runs = [
            (lambda node=node, signal=signal: node.transform(signal))
            for node, signal in zip(static.nodes[:-1], signals[:-1], strict=True)
        ]
        return [statistics.median(t) for t in interleaved_seconds(runs, repeats, device)]


def _ideal_speedup(tree: RoutedTree, exits: torch.Tensor, column_s: list[float]) -> float:
    """The engine's wall-clock ratio if routing and compaction cost nothing.

    Each example pays static-8's time for the columns on its path, so the
    ratio is total column time over the arrival-weighted column time. Where
    this ideal sits below the MAC ratio, the shortfall is the early columns'
    lower MACs per second, not the engine.
    """
    reach = [0.0] * len(column_s)
    leaves, counts = torch.unique(exits.cpu(), return_counts=True)
    for leaf, count in zip(leaves.tolist(), counts.tolist(), strict=True):
        columns = [i for i in tree.path_to(leaf) if not tree.nodes[i].is_leaf]
        for depth in range(len(columns)):
            reach[depth] += count / len(exits)
    return sum(column_s) / sum(r * t for r, t in zip(reach, column_s, strict=True))


def _time_batch(
    engine: EarlyExitEngine,
    static: torch.nn.Module,
    images: torch.Tensor,
    batch: int,
    k_cpt: float | None,
    repeats: int,
    device: torch.device,
) -> dict[str, float]:
    """Engine and static-8 on ``images`` in chunks of ``batch``: speeds and their ratio."""
    chunks = images.split(batch)
    with torch.inference_mode():
        macs = torch.cat([engine(x, k_cpt).macs for x in chunks]).double().mean().item()

        def run_static() -> None:
            for x in chunks:
                static(x)

        def run_engine() -> None:
            for x in chunks:
                engine(x, k_cpt)

        static_s, engine_s = interleaved_seconds([run_static, run_engine], repeats, device)
    count = len(images)
    return {
        "static_images_per_second": count / statistics.median(static_s),
        "engine_images_per_second": count / statistics.median(engine_s),
        "wall_clock_ratio": median_speedup(static_s, engine_s),
        "engine_mean_macs": macs,
    }


if __name__ == "__main__":
    main()
