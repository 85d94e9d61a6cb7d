"""Time of a paper-scale (80,000-iteration) hybrid actor chain, per execution mode.

For each mode (eager fp32, bf16 autocast, torch.compile, compile + CUDA graphs) it
trains the paper's configuration on the real hybrid data for ``--steps`` timed
steps after a warm-up (compilation included there and reported apart), times
one evaluation and one checkpoint, and projects the whole run:
iterations x step + evaluations x evaluation + checkpoints x checkpoint.
``--full MODE`` (or ``auto``: the fastest mode whose projection fits
``--full-budget`` seconds) then trains the complete run and reports its real
wall-clock time, accuracy and mean MACs. Not a test: it prints numbers.

    python benchmarks/bench_paper_time.py --device cuda [--modes eager,bf16,graphs]
        [--steps 300] [--full auto] [--full-budget 300] [--json FILE] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from dynroute.platform.devices import configure_cpu, machine_description, resolve_device
from dynroute.train.config import TrainConfig
from dynroute.train.data import load_training_data
from dynroute.train.trainer import Trainer
from timing import save_results, seconds

MODES = {
    "eager": {},
    "bf16": {"bf16": True},
    "compile": {"compile": True},
    "graphs": {"compile": True, "compile_mode": "reduce-overhead"},
    "graphs-bf16": {"compile": True, "compile_mode": "reduce-overhead", "bf16": True},
}


def measure(trainer: Trainer, warmup: int, steps: int, device: torch.device) -> dict[str, float]:
    """Warm-up (compile), steady-state step, one evaluation and one checkpoint, in seconds."""

    def run(count: int) -> None:
        for _ in range(count):
            trainer.train_step()
        trainer.read_losses()

    record = {"warmup_seconds": seconds(lambda: run(warmup), device)}
    record["step_seconds"] = seconds(lambda: run(steps), device) / steps
    record["evaluation_seconds"] = seconds(trainer.evaluate, device)
    record["checkpoint_seconds"] = seconds(trainer.save, device)
    cfg = trainer.config
    evaluations = math.ceil(cfg.iterations / cfg.resolved_eval_every)
    checkpoints = math.ceil(cfg.iterations / cfg.resolved_checkpoint_every)
    record["projected_seconds"] = (
        cfg.iterations * record["step_seconds"]
        + evaluations * record["evaluation_seconds"]
        + checkpoints * record["checkpoint_seconds"]
    )
    record["images_per_second"] = cfg.batch_size / record["step_seconds"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", default="eager,bf16,graphs", help=f"from {', '.join(MODES)}")
    parser.add_argument("--iterations", type=int, default=80_000)
    parser.add_argument("--k-cpt", type=float, default=4e-9)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--full", default=None, help="a mode, or auto: train the whole run")
    parser.add_argument("--full-budget", type=float, default=300.0, help="seconds, for auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out-dir", default=None, help="keep the full run here")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    unknown = [m for m in args.modes.split(",") if m not in MODES] + (
        [args.full] if args.full not in (None, "auto", *MODES) else []
    )
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    configure_cpu()
    device = resolve_device(args.device)
    base = TrainConfig(
        dataset="hybrid", model="chain", strategy="actor", k_cpt=args.k_cpt,
        iterations=args.iterations, device=str(device),
    )  # fmt: skip
    data = load_training_data(base, args.data_dir, device)
    results: dict[str, object] = {
        "machine": machine_description(),
        "config": base.to_dict(),
        "modes": {},
    }
    modes: dict[str, dict] = results["modes"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.modes.split(","):
            config = replace(base, **MODES[name])
            try:
                trainer = Trainer(config, data, Path(scratch) / name, progress=False)
                modes[name] = record = measure(trainer, args.warmup, args.steps, device)
            except Exception as exc:  # report and go on: one broken mode must not hide the rest
                traceback.print_exc()
                modes[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            print(
                f"{name:<12} {record['images_per_second']:8.0f} img/s  "
                f"step {1e3 * record['step_seconds']:.2f} ms  "
                f"warm-up {record['warmup_seconds']:.1f} s  "
                f"eval {record['evaluation_seconds']:.2f} s  "
                f"projected {args.iterations:,} its: {record['projected_seconds'] / 60:.1f} min",
                flush=True,
            )
            del trainer
    if args.json:  # now, and again after the full run (which may be cut short)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    timed_modes = {k: v for k, v in modes.items() if "projected_seconds" in v}
    full = args.full
    if full == "auto":
        fitting = [k for k, v in timed_modes.items() if v["projected_seconds"] <= args.full_budget]
        full = min(fitting, key=lambda k: timed_modes[k]["projected_seconds"], default=None)
        if full is None:
            print(f"no mode's projection fits {args.full_budget:.0f} s: no full run")
    if full:
        out_dir = Path(args.out_dir or tempfile.mkdtemp()) / f"paper-{full}"
        config = replace(base, **MODES[full])
        trainer = Trainer(config, data, out_dir, progress=False)
        summary: dict = {}
        wall = seconds(lambda: summary.update(trainer.run(overwrite=True)), device)
        final = summary["final"]["test"]
        results["full_run"] = {
            "mode": full,
            "wall_seconds": wall,
            "train_seconds": summary["train_seconds"],
            "test_accuracy": final["accuracy"],
            "test_mean_macs": final["mean_macs"],
            "run_dir": str(out_dir),
        }
        print(
            f"full run ({full}): {args.iterations:,} iterations in {wall / 60:.1f} min wall "
            f"(incl. {math.ceil(args.iterations / config.resolved_eval_every)} evaluations); "
            f"test accuracy {100 * final['accuracy']:.2f} %, {final['mean_macs'] / 1e6:.2f} M MACs"
        )
    save_results(results, args.json)


if __name__ == "__main__":
    main()
