"""Experiment registry, sweeps (skip finished, resume after a kill), executors, CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import DatasetSplit
from dynroute.experiments.claims import check_claims
from dynroute.experiments.executors import ProcessPoolRunner, RayRunner, Task, subset_evaluation
from dynroute.experiments.registry import EXPERIMENTS, expand
from dynroute.experiments.results import (
    RESULT_FORMAT,
    load_results,
    load_variants,
    parse_variant,
    result_path,
    variant_name,
)
from dynroute.experiments.sweep import plan, run_sweep
from dynroute.io.atomic import write_json_atomic
from dynroute.platform import machine
from dynroute.train import config as config_module
from dynroute.train.config import PAPER_K_CPT_SET
from dynroute.train.data import Split, TrainingData
from helpers.stopping_loader import StoppingLoader

torch.set_num_threads(1)
RESULT_KEYS = {
    "format", "experiment", "network", "config", "split", "eval_subset", "iterations",
    "train_seconds", "device", "exits", "class_names", "points", "metrics", "machine", "scale",
    "git_revision", "train_points",
}  # fmt: skip


def test_registry_covers_every_curve_and_expands_to_networks():
    # 26 curves of the paper and its baselines, 18 of the exit-training recipes.
    assert len(EXPERIMENTS) == 44
    (distill,) = expand("cifar10-multi-exit-distill", "cpu")
    assert distill.config.distill == 0.5 and distill.config.strategy == "multi-exit"
    (boost,) = expand("cifar10-resnet18-multi-exit-boost", "smoke")
    assert boost.config.boost == 1.0 and boost.config.model == "resnet18-exits"
    assert expand("hybrid-actor-distill", "smoke")[0].config.distill == 0.5
    assert [n.name for n in expand("hybrid-static", "quick")] == [
        f"static-{n}" for n in range(1, 9)
    ]
    actor = expand("hybrid-actor", "quick")
    assert [n.config.k_cpt for n in actor] == list(PAPER_K_CPT_SET)
    assert actor[3].name == "k_cpt-4e-09" and actor[3].config.iterations == 1500
    (dynamic,) = expand("hybrid-actor-dynkcpt", "paper")
    assert dynamic.name == "dynamic" and dynamic.config.dynamic_k_cpt
    assert dynamic.config.iterations == 80_000 and dynamic.config.resolved_lr == 0.1
    for width in (2, 3):
        nets = expand(f"cifar10-actor-width{width}", "smoke")
        assert [n.config.k_cpt for n in nets] == [k / width**2 for k in PAPER_K_CPT_SET]
        assert all(n.config.width == width for n in nets)
    assert expand("hybrid-critic-optimistic", "smoke")[0].config.critic_target == "optimistic"
    assert expand("hybrid-actor-tree", "smoke")[0].config.model == "tree"
    (multi,) = expand("hybrid-multi-exit", "smoke")
    assert multi.name == "multi-exit" and multi.config.strategy == "multi-exit"
    assert len(plan(["hybrid-actor", "hybrid-actor", "hybrid-static"], "smoke")) == 16


def test_cpu_scale_applies_its_recipe_and_thins_wide_experiments():
    from dynroute.experiments.registry import CPU_RECIPE, SCALES

    iterations = SCALES["cpu"].iterations
    actor = expand("hybrid-actor", "cpu")
    assert len(actor) == 8 and all(n.config.iterations == iterations for n in actor)
    for name, value in CPU_RECIPE.items():
        assert getattr(actor[3].config, name) == value
    # An experiment's own options win over the scale's: k_dec 0 for the ablation, whose
    # curve (a mean gain over static) gets every other k_cpt of the paper's set.
    nokdec = expand("hybrid-actor-nokdec", "cpu")
    assert [n.config.k_cpt for n in nokdec] == list(PAPER_K_CPT_SET[::2])
    assert {(n.config.k_dec, n.config.epsilon) for n in nokdec} == {(0.0, CPU_RECIPE["epsilon"])}
    # The tree keeps k_cpt 0 and the 3 tightest budgets (what the tree-vs-chain claim uses).
    tree = expand("hybrid-actor-tree", "cpu")
    assert [n.config.k_cpt for n in tree] == [0.0, *PAPER_K_CPT_SET[-3:]]
    assert [n.name for n in tree][0] == "k_cpt-0" and len(expand("hybrid-actor-tree", "paper")) == 8
    wide = expand("cifar10-actor-width3", "cpu")
    assert [n.config.k_cpt for n in wide] == [k / 9 for k in PAPER_K_CPT_SET[1::2]]
    # A third of the iterations, and the same number of lr halvings in them.
    half_life = CPU_RECIPE["lr_half_life"] / 3
    assert {(n.config.iterations, n.config.lr_half_life) for n in wide} == {
        (iterations // 3, half_life)
    }
    static = expand("cifar10-static-width2", "cpu")
    assert [n.name for n in static] == ["static-2", "static-4", "static-6", "static-8"]
    # The quick and paper scales keep every network and their own defaults.
    assert len(expand("cifar10-actor-width3", "quick")) == 8
    assert expand("hybrid-actor", "quick")[0].config.epsilon == 1e-6
    resnet = expand("cifar10-resnet18-actor", "cpu")
    assert [n.config.k_cpt for n in resnet] == list(PAPER_K_CPT_SET[1::2])
    assert [n.config.model for n in expand("cifar10-resnet18-static", "smoke")] == [
        f"resnet18-static-{d}" for d in range(1, 5)
    ]


def synthetic_loader(stop_after: int | None = None):
    def load(config, data_dir, device, allow_checksum_mismatch=False) -> TrainingData:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, 64)
        images = rng.random((64, 3, 32, 32), dtype=np.float32)
        split = DatasetSplit(images, labels, tuple("abcdefghij"), (True,) * 10)
        loader = StoppingLoader(split, config.batch_size, seed=config.seed)
        loader.stop_after = stop_after
        test = Split(torch.from_numpy(images[:40]), torch.from_numpy(labels[:40]))
        return TrainingData(loader, {"test": test}, 10)

    return load


def sweep_here(tmp_path: Path, experiments: list[str], **kwargs):
    return run_sweep(
        experiments,
        "smoke",
        results_dir=tmp_path / "results",
        runs_dir=tmp_path / "runs",
        progress=False,
        load_data=kwargs.pop("load_data", synthetic_loader()),
        **kwargs,
    )


@pytest.mark.slow
def test_sweep_only_trains_the_named_networks_and_refuses_unknown_names(tmp_path):
    report = sweep_here(tmp_path, ["hybrid-static"], only=["static-2", "static-5"])
    assert sorted(report.trained) == ["hybrid-static/static-2", "hybrid-static/static-5"]
    assert set(load_results(tmp_path / "results", "smoke")["hybrid-static"]) == {
        "static-2",
        "static-5",
    }
    with pytest.raises(DynrouteError, match="no network static-9 in these experiments"):
        sweep_here(tmp_path, ["hybrid-static"], only=["static-9"])


@pytest.mark.slow
def test_sweep_writes_results_and_skips_finished_networks(tmp_path):
    report = sweep_here(tmp_path, ["hybrid-actor-dynkcpt", "hybrid-static"])
    assert len(report.trained) == 9 and not report.failed
    results = load_results(tmp_path / "results", "smoke")
    static3 = results["hybrid-static"]["static-3"]
    # A static net keeps its test correctness, for paired comparisons with routed points.
    assert RESULT_KEYS | {"accuracy", "mean_macs", "correct_bits"} == set(static3)
    assert static3["config"]["model"] == "static-3" and static3["eval_subset"] == 500
    assert static3["exits"] == ["exit"] and static3["points"][0]["k_cpt"] is None
    assert [m["iteration"] for m in static3["metrics"]] == [2, 4]
    # Evaluated on the training examples too (all 64 of the synthetic split here).
    (train,) = static3["train_points"]
    assert train["num_examples"] == 64 and train["k_cpt"] is None and 0 <= train["accuracy"] <= 1
    dynamic = results["hybrid-actor-dynkcpt"]["dynamic"]
    assert "accuracy" not in dynamic and RESULT_KEYS | {"policies"} == set(dynamic)
    # The routers' point at every k_cpt of the set, analysed on the same 40 test images.
    learned = dynamic["policies"]["learned"]
    assert [p["k_cpt"] for p in learned] == list(PAPER_K_CPT_SET)
    assert [p["k_cpt"] for p in dynamic["train_points"]] == list(PAPER_K_CPT_SET)
    for point, evaluated in zip(learned, dynamic["points"], strict=True):
        assert point["accuracy"] == pytest.approx(evaluated["accuracy"])
        assert point["mean_macs"] == pytest.approx(evaluated["mean_macs"])
    assert [p["k_cpt"] for p in dynamic["points"]] == list(PAPER_K_CPT_SET)
    assert len(dynamic["metrics"][0]["points"][0]["classified"]) == 8

    result_path(tmp_path / "results", "smoke", "hybrid-static", "static-2").unlink()
    again = sweep_here(tmp_path, ["hybrid-actor-dynkcpt", "hybrid-static"])
    assert again.trained == ["hybrid-static/static-2"] and len(again.skipped) == 8


@pytest.mark.slow
def test_multi_exit_result_keeps_paired_threshold_points(tmp_path):
    from dynroute.policies.analysis import RESULT_PAIRED_POINTS
    from dynroute.policies.statistics import unpack_bits

    report = sweep_here(tmp_path, ["hybrid-multi-exit"])
    assert report.trained == ["hybrid-multi-exit/multi-exit"]
    result = load_results(tmp_path / "results", "smoke")["hybrid-multi-exit"]["multi-exit"]
    policies = result["policies"]
    assert policies["num_examples"] == 40 and len(policies["exits"]) == 8
    paired = [p for p in policies["confidence"] if "correct_bits" in p]
    assert 2 <= len(paired) <= RESULT_PAIRED_POINTS
    for point in paired:  # the bits are the point's accuracy, example by example
        bits = unpack_bits(point["correct_bits"], 40)
        assert bits.mean() == pytest.approx(point["accuracy"])
    # Routers left as built (zero last layer, scores tied): every example at exit 1, which
    # costs column 1, exit 1 and the router that decided so.
    (learned,) = policies["learned"]
    assert learned["accuracy"] == policies["single_exit"][0]["accuracy"]
    assert learned["mean_macs"] == result["points"][0]["mean_macs"] == 1368608


@pytest.mark.slow
def test_sweep_execution_options_reach_every_network(tmp_path):
    report = sweep_here(tmp_path, ["hybrid-static"], execution={"device": "cpu"})
    assert len(report.trained) == 8 and not report.failed
    for run in (tmp_path / "runs" / "smoke" / "hybrid-static").iterdir():
        assert json.loads((run / "config.json").read_text())["device"] == "cpu"
    with pytest.raises(DynrouteError, match="not an execution option: k_cpt"):
        sweep_here(tmp_path, ["hybrid-static"], execution={"k_cpt": 1e-9})
    with pytest.raises(DynrouteError, match="only with `compile`"):
        sweep_here(tmp_path, ["hybrid-actor"], execution={"compile_mode": "reduce-overhead"})


@pytest.mark.slow
def test_killed_sweep_resumes_mid_network_and_matches_uninterrupted(tmp_path, monkeypatch):
    """Also when the code's default schedule changed in between: the run keeps its own."""
    whole = sweep_here(tmp_path / "whole", ["hybrid-actor-dynkcpt"])
    assert whole.trained == ["hybrid-actor-dynkcpt/dynamic"]
    with pytest.raises(KeyboardInterrupt):
        sweep_here(tmp_path / "killed", ["hybrid-actor-dynkcpt"], load_data=synthetic_loader(3))
    run_dir = tmp_path / "killed/runs/smoke/hybrid-actor-dynkcpt/dynamic"
    assert (run_dir / "checkpoint.pt").exists()
    assert not (tmp_path / "killed/results/smoke/hybrid-actor-dynkcpt").exists()
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["lr"] == 0.04 and stored["k_cpt_set"] == list(PAPER_K_CPT_SET)
    monkeypatch.setattr(config_module, "default_learning_rate", lambda iterations: 0.5)
    resumed = sweep_here(tmp_path / "killed", ["hybrid-actor-dynkcpt"])
    assert resumed.trained == ["hybrid-actor-dynkcpt/dynamic"]
    a = load_results(tmp_path / "whole/results", "smoke")["hybrid-actor-dynkcpt"]["dynamic"]
    b = load_results(tmp_path / "killed/results", "smoke")["hybrid-actor-dynkcpt"]["dynamic"]
    assert a["points"] == b["points"] and a["config"] == b["config"]
    whole_dir = tmp_path / "whole/runs/smoke/hybrid-actor-dynkcpt/dynamic"
    expected = torch.load(whole_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    actual = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


def test_failed_network_is_reported_and_sweep_continues(tmp_path, monkeypatch):
    def broken(config, data_dir, device, allow_checksum_mismatch=False):
        from dynroute.core.errors import DynrouteError

        raise DynrouteError("no data")

    report = sweep_here(tmp_path, ["hybrid-actor-dynkcpt"], load_data=broken)
    assert report.failed == {"hybrid-actor-dynkcpt/dynamic": "DynrouteError: no data"}


def test_evaluation_subset_is_fixed_and_sized():
    data = synthetic_loader()(expand("hybrid-static", "smoke")[0].config, None, "cpu")
    a, b = subset_evaluation(data, 10), subset_evaluation(data, 10)
    assert len(a.evaluation["test"].labels) == 10
    assert torch.equal(a.evaluation["test"].images, b.evaluation["test"].images)
    assert subset_evaluation(data, None) is data


def test_experiments_command_lists_everything(capsys):
    assert main(["experiments"]) == 0
    out = capsys.readouterr().out
    assert "hybrid-critic-dynkcpt" in out and "cifar10-actor-width3" in out and "paper" in out
    with pytest.raises(SystemExit):
        main(["sweep", "no-such-experiment", "--scale", "smoke"])


# ---------------------------------------------------------------- real data, CLI, pool, Ray
def _env(real_data_dir: Path, real_cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "DYNROUTE_DATA": str(real_data_dir),
            "DYNROUTE_CACHE": str(real_cache_dir), "OMP_NUM_THREADS": "1"}  # fmt: skip


def _dynroute(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    command = [sys.executable, "-m", "dynroute.cli", *args, "--no-progress"]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _layout(root: Path) -> dict[str, set[str]]:
    return {
        str(path.relative_to(root)): set(json.loads(path.read_text()))
        for path in sorted(root.glob("*/*/*.json"))
    }


@pytest.mark.realdata
def test_smoke_sweep_end_to_end_and_process_pool(real_data_dir, real_cache_dir, tmp_path):
    env = _env(real_data_dir, real_cache_dir)
    out = _dynroute(["sweep", "hybrid-static", "hybrid-actor", "--scale", "smoke"], tmp_path, env)
    assert "16 trained" in out
    layout = _layout(tmp_path / "results")
    assert len(layout) == 16
    assert layout["smoke/hybrid-actor/k_cpt-4e-09.json"] >= RESULT_KEYS
    out = _dynroute(["sweep", "hybrid-static", "--scale", "smoke"], tmp_path, env)
    assert "0 trained, 8 already done" in out

    network = expand("hybrid-static", "smoke")[0]
    task = Task(network.experiment, network.name, network.config.to_dict(),
                str(tmp_path / "pool-run"), str(real_data_dir), 500, 1)  # fmt: skip
    os.environ["DYNROUTE_CACHE"] = str(real_cache_dir)  # the spawned worker inherits it
    try:
        runner = ProcessPoolRunner(1, 1)
        ((done_task, result, error),) = list(runner.run([task]))
        runner.close()
    finally:
        os.environ.pop("DYNROUTE_CACHE")
    assert error is None and done_task == task
    local = json.loads((tmp_path / "results/smoke/hybrid-static/static-1.json").read_text())
    assert set(result) | {"scale", "git_revision"} == set(local)
    assert result["points"][0]["num_examples"] == 500


_ORPHAN_DRIVER = """
import os, time
from dynroute.experiments.executors import ProcessPoolRunner
runner = ProcessPoolRunner(1, 1)
print(runner.pool.submit(os.getpid).result(), flush=True)
runner.pool.submit(time.sleep, 600)
time.sleep(600)
"""


@pytest.mark.slow
def test_pool_workers_exit_when_the_sweep_is_killed():
    driver = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_DRIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(driver.stdout.readline())
        os.kill(worker, 0)  # alive while the driver is
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.2)
        orphaned = _alive(worker)
        if orphaned:
            os.kill(worker, 9)
        assert not orphaned, "a pool worker outlived its killed sweep"
    finally:
        driver.kill()
        driver.stdout.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by init) does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc/self").exists():
        return True  # no procfs: cannot tell a zombie from a live process
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.realdata
def test_ray_sweep_on_loopback_matches_local_layout(
    real_data_dir, real_cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = _env(real_data_dir, real_cache_dir)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    port = _free_port()
    start = [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        experiments = ["hybrid-actor-dynkcpt", "hybrid-critic-dynkcpt"]
        args = ["sweep", *experiments, "--scale", "smoke", "--results"]
        _dynroute([*args, "ray", "--ray-address", f"127.0.0.1:{port}"], tmp_path, env)
        _dynroute([*args, "local"], tmp_path, env)
        _check_ray_retries_a_dead_worker(f"127.0.0.1:{port}", tmp_path / "retry")
    finally:
        subprocess.run([ray_cli, "stop"], env=env, capture_output=True, timeout=120)
    ray_layout, local_layout = _layout(tmp_path / "ray"), _layout(tmp_path / "local")
    assert len(ray_layout) == 2 and ray_layout == local_layout


def _die_on_first_attempt(task: Task) -> dict:
    """Kills its own Ray worker the first time, as a lost machine would; then succeeds."""
    marker = Path(task.run_dir, "attempted")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)
    return {"network": task.network}


def _check_ray_retries_a_dead_worker(address: str, run_dir: Path) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    task = Task("retry", "net", {}, str(run_dir), None, None, 1)
    runner = RayRunner(address, work=_die_on_first_attempt)
    try:
        ((done, result, error),) = list(runner.run([task]))
    finally:
        runner.close()
    assert error is None and done == task and result == {"network": "net"}
    assert (run_dir / "attempted").exists()


@pytest.mark.slow
def test_sweep_on_another_dataset_keeps_its_state_and_results_apart(tmp_path, cache_dir, capsys):
    # A tiny 3-class npz, loaded for real: the registry's experiments on data they never saw.
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(30) % 3,
        "x_test": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(12) % 3,
    }
    np.savez(tmp_path / "mine.npz", **arrays)
    name = f"npz:{tmp_path / 'mine.npz'}"
    mine = tmp_path / "results-mine"
    argv = ["sweep", "hybrid-static", "hybrid-actor", "--scale", "smoke", "--only", "static-1",
            "--only", "k_cpt-4e-09", "--runs", str(tmp_path / "runs"), "--no-progress"]  # fmt: skip
    assert main([*argv, "--dataset", name, "--results", str(mine)]) == 0
    results = load_results(mine, "smoke")
    actor = results["hybrid-actor"]["k_cpt-4e-09"]
    assert actor["config"]["dataset"] == name and actor["class_names"] == ["0", "1", "2"]
    assert actor["points"][0]["num_examples"] == 12
    assert (tmp_path / "runs" / f"smoke-npz-{str(tmp_path / 'mine.npz')[1:].replace('/', '-')}"
            / "hybrid-actor" / "k_cpt-4e-09" / "config.json").is_file()  # fmt: skip
    assert not (tmp_path / "runs" / "smoke").exists()
    # The report judges what it can; the digits-vs-CIFAR claim needs hybrid's two kinds.
    (specialise,) = [c for c in check_claims(results) if "specialise by kind" in c.claim]
    assert specialise.verdict == "not run" and "does not mix digits" in specialise.evidence
    # ... and its first lines name the data, so it is never read as a hybrid/CIFAR report.
    assert main(["report", "--scale", "smoke", "--results", str(mine)]) == 0
    report = (mine / "smoke" / "report.md").read_text()
    assert f"Trained on `{name}` instead of each experiment's own dataset." in report
    # The same results folder never takes another dataset's networks, nor the default one.
    capsys.readouterr()
    assert main([*argv, "--results", str(mine)]) == 2
    assert "was trained on 'npz:" in capsys.readouterr().err
    assert main([*argv, "--dataset", "csv:x", "--results", str(mine)]) == 2
    assert "unknown dataset prefix 'csv:'" in capsys.readouterr().err


def test_variants_have_their_own_folders_and_bf16_is_refused_where_it_would_be_float32(
    tmp_path, monkeypatch
):
    for args, name in (((1, None), "cpu-seed1"), ((None, None, True), "cpu-bf16"),
                       ((2, 500, True), "cpu-seed2-val500-bf16")):  # fmt: skip
        assert variant_name("cpu", *args) == name
        assert parse_variant(name) == ("cpu", str(args[0] or 0), name.endswith("-bf16"))
    assert parse_variant("bench") is None and parse_variant("cpu-seedx") is None
    for folder in ("cpu-seed1", "cpu-bf16", "cpu-seed1-bf16", "cpu-val9-bf16", "quick-bf16"):
        (tmp_path / folder / "hybrid-static").mkdir(parents=True)
        result = {"format": RESULT_FORMAT, "experiment": "hybrid-static", "network": "static-1",
                  "config": {}, "points": [{}], "metrics": []}  # fmt: skip
        write_json_atomic(tmp_path / folder / "hybrid-static" / "static-1.json", result)
    (tmp_path / "cpu-seed2-bf16").mkdir()  # a sweep just begun: no result yet
    assert list(load_variants(tmp_path, "cpu")) == ["1"]
    assert list(load_variants(tmp_path, "cpu", bf16=True)) == ["0", "1"]
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(DynrouteError, match="would train in float32"):
        run_sweep(["hybrid-static"], "smoke", results_dir=tmp_path, runs_dir=tmp_path / "runs",
                  bf16=True, execution={"device": "cpu"})  # fmt: skip
