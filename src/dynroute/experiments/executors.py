"""Where a sweep's networks train: in this process, a local process pool, or Ray.

Every executor runs the same ``train_network`` on a ``Task`` and hands back the result
document; only the sweep driver writes result files, so the layout never depends on
the executor.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.data import CACHE_DIR_ENV, DATA_DIR_ENV
from dynroute.errors import DynrouteError
from dynroute.experiments.results import build_result
from dynroute.infer.budgets import budget_table
from dynroute.infer.evaluate import evaluate
from dynroute.infer.operating_points import (
    RESULT_PAIRED_POINTS,
    analyse,
    analysis_k_values,
    dense_outputs,
)
from dynroute.runtime import configure_cpu, resolve_device
from dynroute.train.config import TrainConfig
from dynroute.train.runs import CONFIG_FILE, METRICS_FILE, read_metrics
from dynroute.train.trainer import Split, Trainer, TrainingData, load_training_data

#: Seed of the fixed evaluation subset (smoke scale), independent of the training seed.
EVAL_SUBSET_SEED = 0
#: Training examples every finished network is evaluated on (seeded, without augmentation),
#: for the train/test gap of the overfitting claims: as many as a test split.
TRAIN_EVAL_SIZE = 10_000


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to train one network; plain data, so it pickles anywhere."""

    experiment: str
    network: str
    config: dict[str, Any]
    run_dir: str
    data_dir: str | None
    eval_subset: int | None
    threads: int
    allow_checksum_mismatch: bool = False

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.network}"


#: ``load_training_data``'s signature: (config, data_dir, device, allow_checksum_mismatch).
DataLoaderFn = Callable[[TrainConfig, str | None, torch.device, bool], TrainingData]


def subset_evaluation(data: TrainingData, size: int | None) -> TrainingData:
    """The same data with each evaluation split cut to a fixed, seeded subset of ``size``."""
    if size is None:
        return data
    evaluation = {
        name: _subset(split.images, split.labels, size) for name, split in data.evaluation.items()
    }
    return replace(data, evaluation=evaluation)


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int) -> Split:
    """A fixed, seeded subset of ``size`` examples (all of them if there are fewer)."""
    n = len(labels)
    if size >= n:
        return Split(images, labels)
    rng = np.random.default_rng(EVAL_SUBSET_SEED)
    keep = torch.from_numpy(np.sort(rng.choice(n, size, replace=False)))
    return Split(images[keep.to(images.device)], labels[keep.to(labels.device)])


def train_points(trainer: Trainer, size: int) -> list[dict[str, Any]]:
    """Hard-routing accuracy and mean MACs on a seeded subset of the training split, at
    every k_cpt the network is evaluated at (one point for a fixed-cost net)."""
    loader = trainer.data.loader
    split = _subset(loader.images, loader.labels, size)
    config = trainer.config
    k_values = list(config.resolved_k_cpt_set) if config.dynamic_k_cpt else [None]
    points = []
    for k in k_values:
        stats = evaluate(trainer.tree, split.images, split.labels, k_cpt=k, method="engine")
        fixed = None if config.strategy == "static" else config.k_cpt
        points.append(
            {
                "k_cpt": fixed if k is None else k,
                "num_examples": stats.num_examples,
                "accuracy": stats.accuracy,
                "mean_macs": stats.mean_macs,
            }
        )
    return points


def train_network(task: Task, load_data: DataLoaderFn = load_training_data) -> dict[str, Any]:
    """Train (or resume) one network in its run directory; return its result document."""
    configure_cpu(task.threads)
    config = TrainConfig.from_dict(task.config).validate()
    run_dir = Path(task.run_dir)
    device = resolve_device(config.device)
    data = load_data(config, task.data_dir, device, task.allow_checksum_mismatch)
    data = subset_evaluation(data, task.eval_subset)
    trainer = Trainer(config, data, run_dir, progress=False)
    summary = trainer.run(resume=(run_dir / CONFIG_FILE).exists())
    records = read_metrics(run_dir / METRICS_FILE)
    result = build_result(task.experiment, task.network, summary, records, task.eval_subset)
    result["train_points"] = train_points(trainer, task.eval_subset or TRAIN_EVAL_SIZE)
    tree = trainer.tree
    if len(tree.leaves) > 1:  # every routing policy on this net's exits, for the report
        split = data.evaluation[result["split"]]
        paired = RESULT_PAIRED_POINTS if config.strategy == "multi-exit" else 0
        k_values = analysis_k_values(tree, config.k_cpt_set)
        result["policies"] = analyse(
            tree, split.images, split.labels, k_values, paired_points=paired
        )
        if data.held_out is not None and tree.junctions and not tree.dynamic_k_cpt:
            result["budgets"] = budget_table(
                tree,
                dense_outputs(tree, data.held_out.images, data.held_out.labels),
                dense_outputs(tree, split.images, split.labels),
            )
    return result


Outcome = tuple[Task, dict[str, Any] | None, BaseException | None]


class SerialExecutor:
    """Trains in this process, one network after the other (``--workers 1``)."""

    def __init__(self, load_data: DataLoaderFn = load_training_data) -> None:
        self.load_data = load_data

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            try:
                yield task, train_network(task, self.load_data), None
            except DynrouteError as exc:
                yield task, None, exc

    def close(self) -> None:
        pass


#: Seconds between a pool worker's checks that the sweep that spawned it is alive.
PARENT_POLL_SECONDS = 2.0


def _exit_when_orphaned(parent: int, poll: float) -> None:
    """Exit this process once ``parent`` is gone (the process is then re-parented).

    A killed sweep driver cannot shut its pool down, and spawned workers would train
    on into run directories a restarted sweep also writes to. Networks resume from
    their checkpoints, so dying mid-network loses at most one checkpoint interval.
    """
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(1)


def watch_parent(poll: float = PARENT_POLL_SECONDS) -> None:
    """Start a daemon thread that ends this process when its parent dies."""
    thread = threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(), poll), daemon=True, name="parent-watch"
    )
    thread.start()


def _init_worker(threads: int) -> None:
    configure_cpu(threads)
    watch_parent()


class ProcessPoolRunner:
    """A pool of spawned processes, each with ``threads`` torch threads."""

    def __init__(self, workers: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
        )

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        pending: dict[Future, Task] = {self.pool.submit(train_network, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                error = future.exception()
                yield task, None if error else future.result(), error

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


PATH_VARIABLES = (DATA_DIR_ENV, CACHE_DIR_ENV)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
RAY_MULTI_NODE_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayRunner:
    """One Ray task per network on an existing cluster, retried if its worker dies.

    Retries resume from the network's checkpoint when the retry lands on the machine
    that holds its run directory.
    """

    def __init__(
        self,
        address: str,
        threads: int = 1,
        max_retries: int = 2,
        gpus: int = 0,
        work: Callable[[Task], dict[str, Any]] = train_network,
    ) -> None:
        loopback = address.rsplit(":", 1)[0] in LOOPBACK_HOSTS
        if loopback:
            # Ray rewrites a loopback address to this machine's network IP (where a head
            # started with --node-ip-address=127.0.0.1 does not listen) unless this flag is
            # off; Ray reads it once, on import.
            os.environ.setdefault(RAY_MULTI_NODE_FLAG, "0")
        try:
            import ray
        except ImportError:
            raise DynrouteError("`ray_address` needs Ray: pip install 'dynroute[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            # Ray workers start in their own folders: hand them absolute paths.
            env = {
                k: str(Path(v).expanduser().absolute()) if k in PATH_VARIABLES else v
                for k, v in os.environ.items()
                if k.startswith("DYNROUTE_")
            }
            options = {}
            if loopback:
                # A head started with --node-ip-address=127.0.0.1 only schedules this driver's
                # tasks if the driver joins as 127.0.0.1 too (not as the machine's own IP).
                options["_node_ip_address"] = "127.0.0.1"
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env}, **options)
        self.remote = ray.remote(max_retries=max_retries, num_cpus=threads, num_gpus=gpus)(work)

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        pending = {self.remote.remote(t): t for t in tasks}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield task, self.ray.get(ref), None
                except Exception as exc:  # a task error or a worker lost for good
                    yield task, None, exc

    def close(self) -> None:
        self.ray.shutdown()
