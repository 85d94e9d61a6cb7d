"""Inference at a trained operating point: the early-exit engine vs static-8.

Loads a trained routed network (a run directory or checkpoint), routes real
test images with it, and times the engine against the static 8-column net
(the same convolutions, run densely) at batch 256 and batch 1. Prints the
wall-clock ratio next to the MAC ratio; the issue's target is a wall-clock
speed-up of at least 80 % of the MAC ratio at batch 256, and above 1 at batch 1.

    python benchmarks/bench_inference.py runs/quality/actor-4e-9 [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dynroute import checkpoint
from dynroute.data.datasets import load_dataset
from dynroute.infer.engine import EarlyExitEngine
from dynroute.infer.fold import fold_batchnorm
from dynroute.nn.registry import build_model
from dynroute.runtime import configure_threads, machine_description, resolve_device
from timing import median_seconds, peak_memory_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory or checkpoint of a trained routed network")
    parser.add_argument("--dataset", default=None, help="default: the run's dataset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=2048, help="test images timed at batch 256")
    parser.add_argument("--singles", type=int, default=64, help="images timed one by one")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k-cpt", type=float, default=None, help="for dynamic-k_cpt networks")
    parser.add_argument(
        "--no-fold", dest="fold", action="store_false", help="keep batch norms unfolded"
    )
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    configure_threads(args.threads)
    device = resolve_device(args.device)
    path = Path(args.run)
    config = json.loads((path / "config.json").read_text()) if path.is_dir() else {}
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    tree = checkpoint.load_model(ckpt, map_location=device)
    engine = EarlyExitEngine(tree, channels_last=True, fold_batchnorm=args.fold)
    static = build_model("static-8", tree.num_classes).to(device).eval()
    static.to(memory_format=torch.channels_last)
    if args.fold:  # the same inference preparation for both networks
        fold_batchnorm(static)
    static_macs = static.path_macs(static.leaves[0])

    data = load_dataset(args.dataset or config.get("dataset", "hybrid"))
    images = torch.from_numpy(np.array(data.test.images[: args.images])).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    results: dict[str, object] = {
        "machine": machine_description(),
        "run": str(path),
        "batchnorm_folded": args.fold,
    }
    print(f"machine: {json.dumps(results['machine'])}")
    print(f"{'batch':>6}{'static-8 img/s':>16}{'engine img/s':>14}{'wall ratio':>12}"
          f"{'MAC ratio':>11}{'wall/MAC':>10}")  # fmt: skip
    with torch.inference_mode():
        for batch, count in ((256, args.images), (1, args.singles)):
            chunks = [images[i : i + batch] for i in range(0, count, batch)]
            macs = torch.cat([engine(x, args.k_cpt).macs for x in chunks]).double().mean().item()

            def run_static(chunks=chunks) -> None:
                for x in chunks:
                    static(x)

            def run_engine(chunks=chunks) -> None:
                for x in chunks:
                    engine(x, args.k_cpt)

            static_s, engine_s = median_seconds([run_static, run_engine], args.repeats, device)
            wall, mac = static_s / engine_s, static_macs / macs
            results[f"batch_{batch}"] = {
                "static_images_per_second": count / static_s,
                "engine_images_per_second": count / engine_s,
                "wall_clock_ratio": wall,
                "mac_ratio": mac,
                "engine_mean_macs": macs,
            }
            print(f"{batch:>6}{count / static_s:>16.1f}{count / engine_s:>14.1f}{wall:>12.2f}"
                  f"{mac:>11.2f}{wall / mac:>10.2f}")  # fmt: skip
    results.update(peak_memory_mb(device))
    print("peak memory:", ", ".join(f"{k} {v:.0f}" for k, v in results.items() if "peak" in k))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
