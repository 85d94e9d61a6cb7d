"""Sweep throughput: one worker with every core, or one worker per core with one thread each.

A sweep can train its networks one at a time with every thread (``--workers 1``) or
several at once with a thread each (``--workers N``). Both keep every core busy; which
gets more training iterations through the machine depends on how well one network's
operations use several threads against how much concurrent networks fight over caches
and memory bandwidth. One at a time also finishes each network N times sooner, which
matters when a sweep must fit its longest network into a session. Each round times both
layouts, each in fresh spawned processes with the real ``Trainer`` step (batch 128,
synthetic images of the real shape), so drift hits both alike. Not a test: it prints
numbers with the machine description.

    python benchmarks/bench_workers.py [--models chain tree] [--workers N] [--steps 10]
        [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile

import torch

from dynroute.platform.devices import configure_cpu, machine_description
from dynroute.platform.machine import available_cores
from dynroute.train.config import TrainConfig
from dynroute.train.trainer import Trainer
from timing import save_results

WARMUP_STEPS = 3


def config_for(model: str) -> TrainConfig:
    """The ``cpu`` scale's recipe for an actor (or, for ``static-N``, a static) network."""
    from dynroute.experiments.registry import CPU_RECIPE

    static = model.startswith("static")
    return TrainConfig(
        model=model,
        strategy="static" if static else "actor",
        k_cpt=0.0 if static else 4e-9,
        iterations=100_000,
        eval_every=10**9,
        checkpoint_every=10**9,
        **CPU_RECIPE,
    ).validate()


def worker(model: str, threads: int, steps: int, barrier, results) -> None:
    """Build a trainer, warm it up, wait for the others, then time ``steps`` steps."""
    from bench_train import synthetic_data, timed_steps

    configure_cpu(threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config_for(model), synthetic_data(device), out, progress=False)
        timed_steps(trainer, WARMUP_STEPS, device)
        barrier.wait()
        results.put(timed_steps(trainer, steps, device) / steps)


def seconds_per_step(model: str, workers: int, threads: int, steps: int) -> list[float]:
    """Seconds per step of each of ``workers`` concurrent processes."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=worker, args=(model, threads, steps, barrier, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    times = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chain"])
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    report: dict[str, object] = {"machine": machine_description(), "options": vars(args)}
    for model in args.models:
        one, many = [], []
        for _ in range(args.rounds):
            one += seconds_per_step(model, 1, args.workers, args.steps)
            many.append(statistics.mean(seconds_per_step(model, args.workers, 1, args.steps)))
        single, shared = statistics.median(one), statistics.median(many)
        ratio = single * args.workers / shared  # throughput of N workers / of one worker
        report[model] = {
            "one_worker_seconds_per_step": one,
            "each_of_n_workers_seconds_per_step": many,
            "throughput_ratio_n_workers_vs_one": ratio,
        }
        print(
            f"{model:<10} 1 worker x {args.workers} threads: {single:.3f} s/step "
            f"({1 / single:.2f} steps/s); {args.workers} workers x 1 thread: {shared:.3f} s/step "
            f"each ({args.workers / shared:.2f} steps/s together); throughput "
            f"{args.workers} workers / 1 worker = {ratio:.2f} (median of {args.rounds} rounds)",
            flush=True,
        )
    save_results(report, args.json)


if __name__ == "__main__":
    main()
