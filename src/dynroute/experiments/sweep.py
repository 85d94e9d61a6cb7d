"""``dynroute sweep``: train every network of some experiments, resumably.

A network whose result file exists is done and skipped; one with a run directory but no
result resumes from its checkpoint. Results are written by this driver as networks
finish, so a sweep can be killed at any time and result files committed as they come.
Ctrl-C or SIGTERM stops a sweep within seconds: no network starts after it, running ones
stop at once (they resume from their last checkpoint next time). One sweep at a time uses
a training state folder (a lock in it refuses a second one).
``dataset`` trains every experiment on another dataset (your own, say), so the paper's
curves and claims can be checked on data they were never tuned on.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dynroute.core.errors import DynrouteError, Interrupted, stop_signals
from dynroute.data.datasets import absolute_dataset_name, load_dataset
from dynroute.data.readers.common import expand_user
from dynroute.experiments.executors import (
    DataLoaderFn,
    ProcessPoolRunner,
    RayRunner,
    SerialExecutor,
    Task,
    check_bf16,
)
from dynroute.experiments.registry import Network, expand, get_experiment, get_scale
from dynroute.experiments.results import (
    git_revision,
    read_result,
    result_path,
    scale_dir,
    variant_name,
)
from dynroute.io.atomic import FolderLock, check_writable, write_json_atomic
from dynroute.platform import machine
from dynroute.platform.devices import resolve_device
from dynroute.runs import CONFIG_FILE
from dynroute.train.config import EXECUTION_ONLY, TrainConfig
from dynroute.train.data import load_training_data


@dataclass
class SweepReport:
    """What a sweep did: labels of networks trained, skipped as done, and failed."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def plan(experiments: list[str], scale: str) -> list[Network]:
    """Every network of ``experiments`` at ``scale``, in order, without duplicates."""
    seen: dict[str, Network] = {}
    for name in experiments:
        for network in expand(get_experiment(name), get_scale(scale)):
            seen.setdefault(network.label, network)
    return list(seen.values())


def run_sweep(
    experiments: list[str],
    scale: str,
    *,
    results_dir: str | os.PathLike[str] = "results",
    runs_dir: str | os.PathLike[str] = "runs",
    data_dir: str | None = None,
    allow_checksum_mismatch: bool = False,
    workers: int = 1,
    ray_address: str | None = None,
    progress: bool = True,
    only: list[str] | None = None,
    execution: dict[str, Any] | None = None,
    dataset: str | None = None,
    seed: int | None = None,
    validation_size: int | None = None,
    bf16: bool = False,
    load_data: DataLoaderFn = load_training_data,
) -> SweepReport:
    """Train the missing networks and write their result files; returns what happened.

    ``execution`` sets how every network runs (``device``, ``compile``, ``compile_mode``):
    options that do not change what is computed, so a sweep may resume under other ones.
    On Ray, ``device="cuda"`` asks the cluster for one GPU per network. ``only`` keeps the
    networks of those names (``k_cpt-4e-09``, ``static-3``) and refuses a name none has.
    ``dataset`` replaces every experiment's own dataset (a built-in name, ``folder:PATH``
    or ``npz:PATH``); its training state goes to ``<runs>/<scale>-<dataset>/``, and a
    result file in ``results_dir`` trained on another dataset stops the sweep, so two
    datasets' curves never mix in one folder. ``seed`` trains every network again with that
    seed instead of the registry's 0 (a fresh validation split, initialisation and batch
    order: how much a result owes to one draw), ``validation_size`` with that many training
    images held out instead of the scale's, ``bf16`` in bfloat16 autocast (refused where
    the machine does not compute it natively: the results would be float32's); such a
    variant's results and training state go to their own folders (``variant_name``).
    ``load_data`` replaces dataset loading for in-process runs (tests); spawned and Ray
    workers always load the real dataset.
    """
    if workers < 1:
        raise DynrouteError("`workers` must be at least 1")
    execution = dict(execution or {})
    not_execution = sorted(set(execution) - set(EXECUTION_ONLY))
    if not_execution:
        raise DynrouteError(f"not an execution option: {', '.join(not_execution)}")
    cores = machine.available_cores()
    if not ray_address and workers > cores:
        print(
            f"dynroute: {workers} workers asked for, {cores} core(s) here: using "
            f"{cores}, since more would only slow every network down"
        )
        workers = machine.available_cores()
    if bf16 and not ray_address:  # before any training; each worker checks again
        check_bf16(resolve_device(execution.get("device", "auto")))
    started = time.perf_counter()
    report = SweepReport()
    networks = plan(experiments, scale)
    if only:
        unknown = sorted(set(only) - {n.name for n in networks})
        if unknown:
            names = ", ".join(sorted({n.name for n in networks}))
            raise DynrouteError(f"no network {', '.join(unknown)} in these experiments: {names}")
        networks = [n for n in networks if n.name in only]
    state_dir = Path(runs_dir, scale)
    results_scale = variant_name(scale, seed, validation_size, bf16)
    if results_scale != scale:
        state_dir = Path(runs_dir, results_scale)
        changes = {"seed": seed, "validation_size": validation_size, "bf16": bf16 or None}
        changes = {k: v for k, v in changes.items() if v is not None}
        networks = [replace(n, config=replace(n.config, **changes).validate()) for n in networks]
    if dataset is not None:
        dataset = absolute_dataset_name(dataset)  # a bad name is an error naming the choices
        state_dir = Path(runs_dir, f"{scale}-{_slug(dataset)}")
        networks = [replace(n, config=replace(n.config, dataset=dataset)) for n in networks]
    tasks = []
    for network in networks:
        path = result_path(results_dir, results_scale, network.experiment, network.name)
        if _finished(path, network.config.dataset):
            report.skipped.append(network.label)
            continue
        config = replace(network.config, **execution).validate()
        task = _task(network, config, state_dir, data_dir, workers, ray_address)
        tasks.append(replace(task, allow_checksum_mismatch=allow_checksum_mismatch, scale=scale))
    if not tasks:
        report.seconds = time.perf_counter() - started
        return report
    check_writable(scale_dir(results_dir, results_scale), "results folder")  # before training
    with FolderLock(state_dir, "training state folder", f"sweep {results_scale}"):
        _train(
            tasks,
            report,
            scale,
            Path(results_dir),
            results_scale,
            workers,
            ray_address,
            execution,
            load_data,
            progress,
            len(networks),
        )
    report.seconds = time.perf_counter() - started
    return report


def _train(
    tasks: list[Task],
    report: SweepReport,
    scale: str,
    results_dir: Path,
    results_scale: str,
    workers: int,
    ray_address: str | None,
    execution: dict[str, Any],
    load_data: DataLoaderFn,
    progress: bool,
    total: int,
) -> None:
    """Run ``tasks`` and write each result as it comes; on Ctrl-C, SIGTERM or any failure,
    stop every worker at once (``runner.stop``) instead of waiting for them."""
    revision = git_revision()
    bar = tqdm(
        total=total,
        initial=len(report.skipped),
        desc=f"sweep {scale}",
        unit="net",
        disable=not progress,
        dynamic_ncols=True,
    )
    if workers > 1 and not ray_address:
        prepare_datasets(tasks)
    gpus = 1 if execution.get("device", "auto").startswith("cuda") else 0
    runner = _runner(workers, ray_address, tasks[0].threads, gpus, load_data)
    try:
        for task, result, error in runner.run(tasks):
            if error is not None:
                report.failed[task.label] = f"{type(error).__name__}: {error}"
                bar.write(f"FAILED {task.label}: {error}")
                continue
            assert result is not None
            result.update(scale=scale, git_revision=revision)
            write_json_atomic(
                result_path(results_dir, results_scale, task.experiment, task.network), result
            )
            report.trained.append(task.label)
            bar.write(_describe(task.label, result))
            bar.update(1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI
        # Begun, not finished (a task queued for a worker that never took it has no run).
        running = [t.label for t in runner.running() if Path(t.run_dir, CONFIG_FILE).exists()]
        with stop_signals(signal.SIG_IGN):
            runner.stop()
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        kept = [
            t.label
            for t in tasks
            if result_path(results_dir, results_scale, t.experiment, t.network).exists()
        ]  # on disk, also one written just as the signal came
        message = _stopped_message(signum, len(kept), len(tasks) - len(kept), running)
        raise Interrupted(signum, message) from None
    except BaseException:
        with stop_signals(signal.SIG_IGN):
            runner.stop()
        raise
    else:
        runner.close()
    finally:
        bar.close()


def _stopped_message(signum: int, kept: int, left: int, running: list[str]) -> str:
    name = Interrupted(signum).signal_name
    stopped = (
        f"; stopped {', '.join(running)} (resumed from the last checkpoint next time)"
        if running
        else ""
    )
    return (
        f"sweep stopped by {name}: {kept} network(s) finished and kept, "
        f"{left} not finished{stopped}; run the same sweep again to continue"
    )


def _finished(path: Path, dataset: str) -> bool:
    """Whether ``path`` holds a valid result; a corrupt one is named and trained again, one
    trained on another dataset than ``dataset`` is refused."""
    if not path.exists():
        return False
    try:
        result = read_result(path)
    except DynrouteError as exc:
        print(f"dynroute: {exc}; training that network again", file=sys.stderr)
        return False
    trained_on = result["config"].get("dataset")
    if trained_on != dataset:
        raise DynrouteError(
            f"{path} was trained on {trained_on!r}, not {dataset!r}: give this sweep its own "
            "`results` folder"
        )
    return True


def _slug(dataset: str) -> str:
    """A folder name for ``dataset`` (``folder:/data/pets`` -> ``folder-data-pets``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", dataset).strip("-")


def _task(
    network: Network,
    config: TrainConfig,
    state_dir: Path,
    data_dir: str | None,
    workers: int,
    ray_address: str | None,
) -> Task:
    run_dir = Path(state_dir, network.experiment, network.name).resolve()
    return Task(
        experiment=network.experiment,
        network=network.name,
        config=config.to_dict(),
        run_dir=str(run_dir),
        data_dir=None if data_dir is None else str(expand_user(data_dir, "the data folder")),
        eval_subset=network.eval_subset,
        # A Ray task asks the cluster for one CPU; locally the pool shares this machine's.
        threads=1 if ray_address else machine.threads_per_worker(workers),
    )


def _runner(
    workers: int, ray_address: str | None, threads: int, gpus: int, load_data: DataLoaderFn
):
    if ray_address:
        return RayRunner(ray_address, threads, gpus=gpus)
    if workers == 1:
        return SerialExecutor(load_data)
    return ProcessPoolRunner(workers, threads)


def prepare_datasets(tasks: list[Task]) -> None:
    """Build each dataset's cache once here, before parallel workers would race to."""
    keys = ("dataset", "validation_size", "seed", "image_size", "test_fraction")
    for values, data_dir, allow in sorted(
        {(tuple(t.config[k] for k in keys), t.data_dir, t.allow_checksum_mismatch) for t in tasks},
        key=str,
    ):
        options = dict(zip(keys, values, strict=True))
        load_dataset(options.pop("dataset"), data_dir, allow_checksum_mismatch=allow, **options)


def _describe(label: str, result: dict) -> str:
    """One line per finished network: its accuracy and cost (best point if dynamic)."""
    best = max(result["points"], key=lambda p: p["accuracy"])
    extra = f" (best of {len(result['points'])} k_cpt)" if len(result["points"]) > 1 else ""
    return (
        f"done {label}: accuracy {best['accuracy']:.4f}, mean MACs "
        f"{best['mean_macs'] / 1e6:.2f} M{extra}, {result['train_seconds']:.0f} s"
    )
