"""Where a sweep's networks train: in this process, a local process pool, or Ray.

Every executor runs the same ``train_network`` on a ``Task`` and hands back the result
document; only the sweep driver writes result files, so the layout never depends on
the executor. ``stop`` ends a sweep within seconds (Ctrl-C, SIGTERM, a failure): networks
not yet begun never start, running ones are asked to stop (SIGTERM: they unwind, leaving
their last checkpoint, from which the next sweep resumes) and killed if they do not.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.core.errors import DynrouteError, Interrupted
from dynroute.data import CACHE_DIR_ENV, DATA_DIR_ENV
from dynroute.data.readers.common import expand_user
from dynroute.engine.evaluate import evaluate
from dynroute.experiments.results import build_result
from dynroute.platform.devices import bf16_on, configure_cpu, resolve_device
from dynroute.policies.analysis import RESULT_PAIRED_POINTS, analyse, analysis_k_values
from dynroute.policies.exit_table import dense_outputs
from dynroute.policies.statistics import pack_bits
from dynroute.policies.table import budget_table
from dynroute.runs import CONFIG_FILE, METRICS_FILE, read_metrics
from dynroute.train.config import TrainConfig
from dynroute.train.data import Split, TrainingData, load_training_data
from dynroute.train.strategies import trains_routers
from dynroute.train.trainer import Trainer

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
    scale: str | None = None  # recorded in the run's data record

    @property
    def origin(self) -> dict[str, str]:
        """The sweep entry this task trains (the run directory records it)."""
        origin = {"experiment": self.experiment, "network": self.network}
        return origin if self.scale is None else {**origin, "scale": self.scale}

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


def check_bf16(device: torch.device) -> None:
    """Refuse bf16 training where it would silently be float32: a result filed under bf16
    must have been computed in it."""
    if not bf16_on(device, True, warn=False):
        raise DynrouteError(
            "--bf16: this machine computes bfloat16 neither on CUDA nor natively on its CPU "
            "(avx512_bf16 or amx_bf16), so the networks would train in float32"
        )


def train_network(task: Task, load_data: DataLoaderFn = load_training_data) -> dict[str, Any]:
    """Train (or resume) one network in its run directory; return its result document."""
    configure_cpu(task.threads)
    config = TrainConfig.from_dict(task.config).validate()
    run_dir = Path(task.run_dir)
    device = resolve_device(config.device)
    if config.bf16:  # checked where it trains (a Ray worker may be another machine)
        check_bf16(device)
    data = load_data(config, task.data_dir, device, task.allow_checksum_mismatch)
    data = subset_evaluation(data, task.eval_subset)
    trainer = Trainer(config, data, run_dir, progress=False, origin=task.origin)
    summary = trainer.run(resume=(run_dir / CONFIG_FILE).exists())
    records = read_metrics(run_dir / METRICS_FILE)
    result = build_result(task.experiment, task.network, summary, records, task.eval_subset)
    result["train_points"] = train_points(trainer, task.eval_subset or TRAIN_EVAL_SIZE)
    tree = trainer.tree
    split = data.evaluation[result["split"]]
    if data.held_out is not None and not tree.dynamic_k_cpt:  # choices on validation read it
        held = data.held_out
        stats = evaluate(tree, held.images, held.labels)
        result["validation"] = {
            "num_examples": stats.num_examples,
            "accuracy": stats.accuracy,
            "mean_macs": stats.mean_macs,
        }
    if len(tree.leaves) == 1:  # a static net: its test correctness, for paired comparisons
        outputs = dense_outputs(tree, split.images, split.labels)
        result["correct_bits"] = pack_bits(outputs.logits[:, 0].argmax(1) == outputs.labels)
    if len(tree.leaves) > 1:  # every routing policy on this net's exits, for the report
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
                routers=trains_routers(config.strategy),
            )
    return result


Outcome = tuple[Task, dict[str, Any] | None, BaseException | None]


class SerialExecutor:
    """Trains in this process, one network after the other (``--workers 1``)."""

    def __init__(self, load_data: DataLoaderFn = load_training_data) -> None:
        self.load_data = load_data
        self.current: Task | None = None

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            self.current = task
            try:
                outcome = task, train_network(task, self.load_data), None
            except DynrouteError as exc:
                outcome = task, None, exc
            self.current = None
            yield outcome

    def running(self) -> list[Task]:
        return [] if self.current is None else [self.current]

    def close(self) -> None:
        pass

    def stop(self) -> None:
        """Nothing runs beside this process: an interrupted network has already unwound."""


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


#: Seconds a stopped worker has to unwind (remove temporary files, drop its run's lock)
#: before it is killed; it loses at most what it trained since its last checkpoint.
STOP_GRACE_SECONDS = 5.0


#: Whether this pool worker is training a network (else a stop request just ends it).
_in_task = False


def _exit_worker(status: int) -> None:
    """End this pool worker now, releasing what it registered (tqdm's lock is a named
    semaphore that would otherwise be reported as leaked when the sweep exits)."""
    with contextlib.suppress(Exception):
        from multiprocessing import util

        util._run_finalizers(0)
    os._exit(status)


def _stop_worker(signum: int, frame: object) -> None:
    if not _in_task:
        _exit_worker(128 + signum)
    raise Interrupted(signum)


def _init_worker(threads: int) -> None:
    configure_cpu(threads)
    watch_parent()
    # Ctrl-C reaches every process of the terminal's group; the sweep driver decides what
    # stops, and tells its workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)


def _train_in_worker(task: Task) -> dict[str, Any]:
    """``train_network`` in a pool worker; asked to stop, the worker ends once the network
    has unwound, so it never takes up another one."""
    global _in_task
    _in_task = True
    try:
        return train_network(task)
    except KeyboardInterrupt:
        _exit_worker(128 + signal.SIGTERM)
    finally:
        _in_task = False


class ProcessPoolRunner:
    """A pool of spawned processes, each with ``threads`` torch threads."""

    def __init__(self, workers: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
        )
        self.pending: dict[Future, Task] = {}

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        self.pending = {self.pool.submit(_train_in_worker, t): t for t in tasks}
        while self.pending:
            done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = self.pending.pop(future)
                error = future.exception()
                yield task, None if error else future.result(), error

    def running(self) -> list[Task]:
        """The tasks a worker has begun and not finished."""
        return [task for future, task in self.pending.items() if future.running()]

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Start nothing more, ask every worker to stop (SIGTERM), kill those still running
        after ``grace`` seconds; returns once they are gone, without waiting for any network."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        # The pool cancels what has not started (it must do so itself: a future cancelled
        # behind its back breaks its bookkeeping once its workers are gone).
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(1.0)
        manager = getattr(self.pool, "_executor_manager_thread", None)
        if manager is not None:  # it notices the workers are gone and closes its queues
            manager.join(grace)


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
                k: str(expand_user(v, f"${k}")) if k in PATH_VARIABLES else v
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
        self.pending: dict[Any, Task] = {}

    def run(self, tasks: list[Task]) -> Iterator[Outcome]:
        self.pending = {self.remote.remote(t): t for t in tasks}
        while self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=1)
            for ref in done:
                task = self.pending.pop(ref)
                try:
                    yield task, self.ray.get(ref), None
                except Exception as exc:  # a task error or a worker lost for good
                    yield task, None, exc

    def running(self) -> list[Task]:
        return list(self.pending.values())

    def close(self) -> None:
        self.ray.shutdown()

    def stop(self) -> None:
        """Cancel every task not finished (force: its worker is killed), then disconnect."""
        for ref in self.pending:
            with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                self.ray.cancel(ref, force=True)
        self.ray.shutdown()
