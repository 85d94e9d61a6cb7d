"""The trainer: validation, metrics, checkpoints, NaN handling, exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dynroute.core.errors import DynrouteError
from dynroute.nn import registry
from dynroute.nn.models import _routed_column
from dynroute.train import config as config_module
from dynroute.train.resume import prepare_run_dir
from dynroute.train.trainer import Trainer
from helpers.training import synthetic_data, tiny_config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "resnet"}, "`model` must be one of chain"),
        ({"strategy": "greedy"}, "`strategy` must be one of static"),
        ({"k_cpt": -1.0}, "`k_cpt` must be a finite number >= 0"),
        ({"tau": 0.0}, "`tau` must be a finite number > 0"),
        ({"tau": -1.0}, "`tau` must be a finite number > 0"),
        ({"tau": math.inf}, "`tau` must be a finite number > 0"),
        ({"lr": math.inf}, "`lr` must be a finite number > 0"),
        ({"lr": math.nan}, "`lr` must be a finite number > 0"),
        ({"momentum": 10.0}, "`momentum` must be a finite number >= 0 and < 1"),
        ({"epsilon": 2.0}, "`epsilon` must be a finite number >= 0 and <= 1"),
        ({"eval_every": -1}, "`eval_every` must be an integer >= 1"),
        ({"checkpoint_every": -1}, "`checkpoint_every` must be an integer >= 1"),
        ({"width": 100_000}, "`width` must be an integer >= 1 and <= 16"),
        ({"width": 1.5}, "`width` must be an integer"),
        ({"iterations": 0}, "`iterations` must be an integer >= 1"),
        ({"iterations": -5}, "`iterations` must be an integer >= 1"),
        ({"batch_size": 0}, "`batch_size` must be"),
        ({"seed": -1}, "`seed` must be"),
        ({"sampling": "sometimes"}, "`sampling` must be one of replacement, epoch"),
        ({"eval_splits": ("tset",)}, "`eval_splits` must be one of train, validation, test"),
        ({"k_cpt_set": (1e-9, math.inf), "dynamic_k_cpt": True}, "`k_cpt_set` must be"),
        ({"critic_target": "lazy", "strategy": "critic"}, "`critic_target` must be one of"),
        ({"device": "tpu"}, "`device` must be cpu, cuda"),
        ({"model": "static-3", "strategy": "static", "k_cpt": 1e-9}, "does not apply to a static"),
        ({"k_cpt_set": (1e-9,)}, "only used with dynamic"),
        ({"dynamic_k_cpt": True, "k_cpt_set": ()}, "`k_cpt_set` needs at least one value"),
        ({"model": "static-3", "strategy": "actor"}, "needs the static strategy"),
        ({"eval_splits": ("validation",)}, "validation_size"),
        ({"lr_warmup": 7}, "`lr_warmup` must be at most the iterations"),
        ({"lr_warmup": -1}, "`lr_warmup` must be an integer >= 0"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(DynrouteError, match=message):
        tiny_config(**changes).validate()


@pytest.mark.slow
def test_training_writes_metrics_checkpoints_and_summary(tmp_path):
    trainer = Trainer(tiny_config(), synthetic_data(), tmp_path / "run", progress=False)
    summary = trainer.run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [3, 6]
    stats = lines[-1]["test"]
    assert {n["name"] for n in stats["nodes"]} >= {"column1", "exit1", "column8", "exit8"}
    assert sum(n["classified"] for n in stats["nodes"]) == pytest.approx(1.0)
    assert summary["iterations"] == 6
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"] == 6


@pytest.mark.slow
def test_run_directory_is_protected(tmp_path):
    Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False).run()
    with pytest.raises(DynrouteError, match="already holds a run"):
        Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False).run()
    with pytest.raises(DynrouteError, match="different run.*k_cpt"):
        Trainer(tiny_config(k_cpt=1e-9), synthetic_data(), tmp_path, progress=False).run(
            resume=True
        )
    Trainer(tiny_config(k_cpt=1e-9), synthetic_data(), tmp_path, progress=False).run(overwrite=True)
    assert json.loads((tmp_path / "config.json").read_text())["k_cpt"] == 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("read_every", [1, 3])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, read_every):
    """Also when the loss is read only every few steps (as on a GPU): the error names the
    first bad iteration and no checkpoint holds weights that a NaN loss has touched."""
    trainer = Trainer(tiny_config(iterations=8), synthetic_data(), tmp_path, progress=False)
    trainer.loss_read_every = read_every
    original = trainer.strategy.loss

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if trainer.step == 5:
            out.loss = out.loss * float("nan")
        return out

    trainer.strategy.loss = poisoned
    with pytest.raises(DynrouteError, match="loss became nan at iteration 5"):
        trainer.run()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["extra"]["step"] == 4
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.slow
def test_deferred_loss_reads_report_every_loss(tmp_path):
    trainer = Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False)
    trainer.loss_read_every = 4
    infos = [trainer.train_step() for _ in range(4)]
    assert all(math.isnan(info["loss"]) for info in infos[:3])  # queued, not read yet
    assert math.isfinite(infos[3]["loss"]) and infos[3]["loss"] > 0
    trainer.train_step()
    assert trainer.read_losses() != infos[3]["loss"]  # the fifth step's loss, read on demand


def test_compile_mode_needs_compile():
    with pytest.raises(DynrouteError, match="only with `compile`"):
        tiny_config(compile_mode="reduce-overhead").validate()
    with pytest.raises(DynrouteError, match="`compile_mode` must be one of default"):
        tiny_config(compile=True, compile_mode="fast").validate()


@pytest.mark.slow
def test_resume_in_process_equals_uninterrupted(tmp_path):
    full = Trainer(tiny_config(), synthetic_data(), tmp_path / "full", progress=False)
    full.run()
    with pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at step 4
        Trainer(
            tiny_config(), synthetic_data(stop_after=4), tmp_path / "part", progress=False
        ).run()
    # Two batches left: a run that restarted from step 0 instead of resuming would stop.
    resumed = Trainer(
        tiny_config(), synthetic_data(stop_after=2), tmp_path / "part", progress=False
    )
    assert resumed.run(resume=True)["iterations"] == 6
    expected, actual = full.tree.state_dict(), resumed.tree.state_dict()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


@pytest.mark.slow
def test_checkpoint_without_config_is_never_overwritten_silently(tmp_path):
    trainer = Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False)
    trainer.save()  # a checkpoint, and no config.json beside it
    for resume in (False, True):
        with pytest.raises(DynrouteError, match="holds a checkpoint but no config.json"):
            Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False).run(resume=resume)
    summary = Trainer(tiny_config(), synthetic_data(), tmp_path, progress=False).run(overwrite=True)
    assert summary["iterations"] == 6


def _change_default_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a later version of the code with other schedule defaults."""
    monkeypatch.setattr(config_module, "default_learning_rate", lambda iterations: 0.5)
    monkeypatch.setattr(config_module, "default_lr_half_life", lambda iterations: 1.0)
    monkeypatch.setattr(config_module, "default_lr_warmup", lambda iterations: 0)
    monkeypatch.setattr(config_module, "scaled_half_life", lambda half_life, iterations: 0.5)


@pytest.mark.slow
def test_new_run_directory_stores_the_resolved_schedule(tmp_path):
    config = tiny_config(checkpoint_every=None)
    Trainer(config, synthetic_data(), tmp_path, progress=False).run()
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored == config.resolved().to_dict()
    assert stored["lr"] == 0.04 and stored["lr_warmup"] == 1 and stored["checkpoint_every"] == 1
    assert config.lr is None  # the caller's config still means "use the default"


@pytest.mark.slow
def test_resume_keeps_the_stored_schedule_when_the_defaults_change(tmp_path, monkeypatch):
    """A run begun under one default recipe and resumed under another ends as if it had
    never stopped: its directory holds the schedule, not nulls for today's defaults."""
    config = tiny_config()  # lr, its half-life and warm-up, tau's half-life: the defaults
    full = Trainer(config, synthetic_data(), tmp_path / "full", progress=False)
    full.run()
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at step 4
        Trainer(config, synthetic_data(stop_after=4), part, progress=False).run()
    _change_default_recipe(monkeypatch)
    resumed = Trainer(config, synthetic_data(), part, progress=False)
    assert resumed.schedule.lr == 0.5  # today's default, until the run directory is read
    summary = resumed.run(resume=True)
    assert resumed.schedule == full.schedule
    assert summary["config"] == full.config.to_dict()
    expected, actual = full.tree.state_dict(), resumed.tree.state_dict()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


@pytest.mark.slow
def test_run_directory_with_nulls_resumes_with_todays_defaults(tmp_path, monkeypatch):
    """Run directories written before schedules were resolved keep resuming as they did."""
    config = tiny_config()
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, synthetic_data(stop_after=4), tmp_path, progress=False).run()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))  # the old format
    _change_default_recipe(monkeypatch)
    resumed = Trainer(config, synthetic_data(), tmp_path, progress=False)
    assert resumed.run(resume=True)["iterations"] == 6
    assert (resumed.schedule.lr, resumed.schedule.lr_half_life) == (0.5, 1.0)
    assert json.loads((tmp_path / "config.json").read_text())["lr"] is None  # left as it was
    run_config, _ = prepare_run_dir(tmp_path, replace(config, lr=0.5), True, False)
    assert run_config.lr == 0.5
    with pytest.raises(DynrouteError, match=r"differs in lr\)"):
        prepare_run_dir(tmp_path, replace(config, lr=0.04), True, False)


def test_resolved_run_directory_matches_the_request_that_made_it(tmp_path):
    config = tiny_config()
    created, has_checkpoint = prepare_run_dir(tmp_path, config, False, False)
    assert created == config.resolved() and not has_checkpoint
    resolved = config.resolved()
    for request in (config, resolved, replace(config, lr=resolved.lr, device="cpu")):
        run_config, _ = prepare_run_dir(tmp_path, request, True, False)
        assert run_config == replace(resolved, device=request.device)
    with pytest.raises(DynrouteError, match=r"differs in lr, lr_warmup\)"):
        prepare_run_dir(tmp_path, replace(config, lr=0.1, lr_warmup=0), True, False)
    with pytest.raises(DynrouteError, match=r"differs in k_cpt\)"):
        prepare_run_dir(tmp_path, replace(resolved, k_cpt=1e-9), True, False)


@pytest.mark.slow
def test_dynamic_k_cpt_training_evaluates_every_k(tmp_path):
    config = tiny_config(dynamic_k_cpt=True, k_cpt_set=(0.0, 1e-8), iterations=2, eval_every=2)
    trainer = Trainer(config, synthetic_data(), tmp_path, progress=False)
    summary = trainer.run()
    assert set(summary["final"]["test"]) == {"0.0", "1e-08"}


@pytest.mark.parametrize(
    "changes",
    [
        {"strategy": "critic", "critic_target": "optimistic"},
        {"strategy": "critic", "error_measure": "classification"},
        {"strategy": "static", "model": "static-2"},
    ],
)
@pytest.mark.slow
def test_critic_and_static_learn_the_synthetic_task(tmp_path, changes):
    """Colour decides the class: 40 steps take every strategy far above chance (1/3)."""
    config = tiny_config(
        iterations=40, eval_every=40, checkpoint_every=40, lr_half_life=1000, **changes
    )
    trainer = Trainer(config, synthetic_data(), tmp_path / "run", progress=False)
    first = trainer.train_step()["loss"]
    summary = trainer.run(resume=False)
    assert summary["iterations"] == 40
    assert trainer.read_losses() < first
    assert summary["final"]["test"]["accuracy"] >= 0.9


@pytest.mark.slow
def test_tree_trains_and_reports_every_exit(tmp_path):
    config = tiny_config(model="tree", iterations=2, eval_every=2)
    summary = Trainer(config, synthetic_data(), tmp_path / "tree", progress=False).run()
    nodes = summary["final"]["test"]["nodes"]
    exits = [n for n in nodes if n["is_leaf"]]
    assert len(exits) == 47
    assert sum(n["classified"] for n in exits) == pytest.approx(1.0)
    assert sum(sum(n["class_counts"]) for n in exits) == 32


def _two_column_chain(num_classes: int, width: int = 1, dynamic_k_cpt: bool = False):
    """The chain's first two columns: the same code paths, a graph that compiles fast."""
    last = _routed_column(1, "", [], num_classes, width, dynamic_k_cpt)
    return _routed_column(0, "", [last], num_classes, width, dynamic_k_cpt)


@pytest.mark.slow
def test_compiled_objective_matches_eager(tmp_path, monkeypatch):
    """--compile (forward + actor loss as one graph, tau as a tensor) trains like eager."""
    monkeypatch.setitem(
        registry._REGISTRY, "test-chain-2", registry.ModelEntry("test-chain-2", _two_column_chain)
    )  # this test only
    losses = {}
    for compile_ in (False, True):
        config = tiny_config(model="test-chain-2", k_cpt=4e-9, compile=compile_)
        trainer = Trainer(config, synthetic_data(), tmp_path / str(compile_), progress=False)
        losses[compile_] = [trainer.train_step()["loss"] for _ in range(3)]
        assert trainer.step == 3
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-5)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)  # rounding drifts a little
    assert losses[False][0] != losses[False][2]  # the weights (and tau) moved


@pytest.mark.slow
def test_run_reports_its_compile_time(tmp_path, monkeypatch):
    monkeypatch.setitem(
        registry._REGISTRY, "test-chain-2", registry.ModelEntry("test-chain-2", _two_column_chain)
    )
    for compile_ in (False, True):
        config = tiny_config(model="test-chain-2", k_cpt=4e-9, iterations=2, compile=compile_)
        trainer = Trainer(config, synthetic_data(), tmp_path / str(compile_), progress=False)
        summary = trainer.run()
        if compile_:
            assert 0 < summary["compile_seconds"] <= summary["train_seconds"]
        else:
            assert summary["compile_seconds"] is None


# ---------------------------------------------------------------- real data, via the CLI


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]


@pytest.mark.realdata
def test_cli_sigkill_and_resume_match_uninterrupted_run(hybrid_subset, real_cache_dir, tmp_path):
    args = [
        sys.executable, "-m", "dynroute.cli", "train", "--dataset", f"npz:{hybrid_subset}",
        "--model", "chain", "--strategy", "actor", "--k-cpt", "4e-9", "--iterations", "96",
        "--batch-size", "32", "--eval-every", "24", "--checkpoint-every", "6", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DYNROUTE_CACHE": str(real_cache_dir)}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([*args, "--out", str(full)], check=True, env=env, timeout=600)
    metrics = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [24, 48, 72, 96]
    assert len(metrics[-1]["test"]["nodes"]) == 16

    proc = subprocess.Popen([*args, "--out", str(killed)], env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        ckpt = killed / "checkpoint.pt"
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["extra"]["step"] >= 12:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["extra"]["step"]
    assert 12 <= step < 96, "the run must be killed part-way"
    subprocess.run([*args, "--out", str(killed), "--resume"], check=True, env=env, timeout=600)
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in resumed] == [24, 48, 72, 96]


@pytest.mark.slow
def test_multi_exit_training_leaves_routers_as_built(tmp_path):
    config = tiny_config(strategy="multi-exit", iterations=4, eval_every=4)
    trainer = Trainer(config, synthetic_data(), tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.tree.state_dict().items() if ".router." in k}
    trainer.run()
    after = trainer.tree.state_dict()
    weights = [k for k in before if k.endswith("weight") and "layers.0" in k]
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    with pytest.raises(DynrouteError, match="k_cpt does not apply to multi-exit"):
        tiny_config(strategy="multi-exit", k_cpt=1e-9).validate()
    with pytest.raises(DynrouteError, match="multi-exit and actor strategies only"):
        tiny_config(strategy="critic", exit_weights=(1.0,) * 8).validate()
