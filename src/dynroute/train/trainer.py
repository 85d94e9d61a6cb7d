"""The training loop: the engineering around a strategy's loss.

Iteration-based, seeded, resumable. A run directory holds ``config.json``,
``data.json`` (what the run trains on), ``metrics.jsonl`` (one line per evaluation, with
per-node statistics, each appended whole), ``checkpoint.pt`` (atomic, every N iterations
and at the end) and ``summary.json`` once finished. Resuming a killed run replays nothing:
the checkpoint carries model, optimiser and random-generator state, so the final weights
equal those of an uninterrupted run (CPU, deterministic mode); resuming it on other data
is refused. One process at a time trains in a run directory (``runs.run_lock``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dynroute.core.errors import DynrouteError
from dynroute.io.atomic import append_line, write_json_atomic
from dynroute.nn import checkpoint
from dynroute.nn.backbones import load_pretrained
from dynroute.nn.evaluation import routing_statistics, routing_statistics_by_k
from dynroute.nn.macs import tree_costs
from dynroute.nn.models import build_model
from dynroute.nn.registry import CUSTOM_MODEL
from dynroute.nn.tree import DenseOutput, RoutedTree
from dynroute.platform.devices import bf16_on, resolve_device, to_device, use_channels_last
from dynroute.runs import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    DataRecord,
    metrics_line,
    run_lock,
)
from dynroute.train.config import TrainConfig
from dynroute.train.data import TrainingData
from dynroute.train.resume import prepare_run_dir, truncate_metrics, validate_config
from dynroute.train.schedules import Schedule
from dynroute.train.strategies import LossOutput, make_strategy
from dynroute.train.talr import apply_talr, talr_scales

#: On a GPU the host reads the loss (to log it and stop on NaN) only every this many steps:
#: each read waits for the GPU to finish, which would leave it idle while the next step
#: is being queued. Checkpoints and evaluations always read first.
GPU_LOSS_READ_EVERY = 25
#: ``--compile-mode`` -> inductor options. The tree is already laid out for its
#: convolutions (channels-last), so inductor's own layout pass only adds copies (on the
#: 2-core CPU it made the compiled step ~15 % slower than eager). ``reduce-overhead``
#: replays the compiled forward and backward passes as CUDA graphs.
COMPILE_OPTIONS: dict[str, dict[str, Any]] = {
    "default": {"layout_optimization": False},
    "reduce-overhead": {"layout_optimization": False, "triton.cudagraphs": True},
}


class Trainer:
    """Runs one ``TrainConfig`` on one ``TrainingData`` into one directory.

    ``tree``: the caller's own network, for a config with model ``custom`` (``dynroute.fit``);
    it is trained in place. A checkpoint cannot rebuild such a tree, so resuming the run
    takes the same tree (built the same way) again.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        out_dir: str | os.PathLike[str],
        progress: bool = True,
        tree: RoutedTree | None = None,
        origin: dict[str, str] | None = None,
    ) -> None:
        self.config = validate_config(config)
        self.data = data
        #: What the run trains on (written to data.json), with its sweep entry (``origin``).
        self.record = self._record(origin or {})
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.tree: RoutedTree = self._network(tree).to(self.device)
        self.bf16 = bf16_on(self.device, config.bf16)
        self.channels_last = config.channels_last and use_channels_last(self.device, self.bf16)
        if self.channels_last:
            self.tree.to(memory_format=torch.channels_last)
        self.strategy = make_strategy(config.strategy, **config.strategy_options())
        self.strategy.check(self.tree)
        for p in self.strategy.extra_parameters():  # learned exit weights: beside the tree
            p.data = p.data.to(self.device)
        self._gradient_scales = self.strategy.gradient_scales(self.tree)
        if not self.strategy.trains_routers:  # left as built: zero last layer, undecided
            for node in self.tree.nodes:
                if node.router is not None:
                    node.router.requires_grad_(False)
        self.use_config(self.config)
        # Fused: one kernel (one launch on a GPU) instead of a Python loop over the chain's
        # 166 parameters (3.9 -> 0.7 ms per step on the development CPU).
        self.optimizer = torch.optim.SGD(
            [*self.tree.parameters(), *self.strategy.extra_parameters()],
            lr=self.schedule.lr,
            momentum=config.momentum,
            fused=True if self.device.type in ("cpu", "cuda") else None,
        )
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.step = 0
        #: Iteration of the checkpoint on disk written or loaded by this trainer, if any.
        self.saved_step: int | None = None
        self._last_batch: tuple[Any, ...] | None = None
        self.train_seconds = 0.0
        #: With --compile: seconds of this process's first step, which compiles the graphs.
        self.compile_seconds: float | None = None
        self.last_eval: dict[str, Any] | None = None
        self.loss_read_every = 1 if self.device.type == "cpu" else GPU_LOSS_READ_EVERY
        self._unread_losses: list[tuple[int, torch.Tensor]] = []
        self._last_loss = math.nan
        # --compile compiles the forward pass and the strategy's loss as one graph, so
        # the loss's many small per-node ops fuse too; tau goes in as a tensor so its
        # decay does not trigger recompilation.
        tree_costs(self.tree)  # count (and keep) MACs with hooks before anything compiles
        graphs = config.compile and config.compile_mode == "reduce-overhead"
        self._cuda_graphs = graphs and self.device.type == "cuda"
        self._objective = (
            torch.compile(self.objective, options=COMPILE_OPTIONS[config.compile_mode])
            if config.compile
            else self.objective
        )

    def _record(self, origin: dict[str, str]) -> DataRecord | None:
        record = self.data.record
        if record is None and not origin:
            return None  # arrays that say nothing about themselves (tests)
        if record is None:
            record = DataRecord(self.config.dataset, tuple(self.data.class_names))
        return replace(record, **origin)

    def _network(self, tree: RoutedTree | None) -> RoutedTree:
        """The registered model the config names (with its pretrained weights), or the
        caller's tree, checked against the config and data."""
        cfg = self.config
        custom = cfg.model == CUSTOM_MODEL
        if tree is None and custom:
            raise DynrouteError(
                f"a run with model {CUSTOM_MODEL!r} trains your own tree: pass the same tree "
                "again (dynroute.fit(tree, ...) or Trainer(..., tree=tree))"
            )
        if tree is None:
            built = build_model(
                cfg.model,
                self.data.num_classes,
                cfg.width,
                cfg.dynamic_k_cpt,
                cfg.image_size,
                boost=cfg.boost,
            )
            if cfg.pretrained_weights is not None:
                load_pretrained(built, cfg.pretrained_weights)
            return built
        if not custom:
            raise DynrouteError(
                f"a run on your own tree has model {CUSTOM_MODEL!r}, not {cfg.model!r}"
            )
        if tree.num_classes != self.data.num_classes:
            raise DynrouteError(
                f"the tree has {tree.num_classes} classes, the data {self.data.num_classes}"
            )
        if tree.dynamic_k_cpt != cfg.dynamic_k_cpt:
            state = "routes" if tree.dynamic_k_cpt else "does not route"
            raise DynrouteError(f"the tree {state} on k_cpt: set dynamic_k_cpt to match")
        if tree.boost != cfg.boost:
            raise DynrouteError(
                f"the tree's exits are boosted by {tree.boost:g}, the config says {cfg.boost:g}: "
                "build the tree with RoutedTree(..., boost=...) to match"
            )
        if cfg.pretrained_weights is not None:
            raise DynrouteError(
                "pretrained_weights loads into registered backbones only; load your own "
                "tree's weights before training it (dynroute.nn.backbones.load_torchvision_weights)"
            )
        if not tree.spec:  # what the checkpoint records; ``checkpoint.load_model`` refuses it
            tree.spec = {
                "name": CUSTOM_MODEL,
                "num_classes": tree.num_classes,
                "dynamic_k_cpt": tree.dynamic_k_cpt,
            }
        return tree

    def use_config(self, config: TrainConfig) -> None:
        """Take the schedule (lr, tau, k_cpt set) from ``config``.

        ``run`` calls this again with the run directory's config, so that a resumed run
        keeps the schedule it started with.
        """
        self.config = config
        self.schedule = Schedule(
            config.resolved_lr,
            config.resolved_lr_half_life,
            config.resolved_tau,
            config.resolved_tau_half_life,
            config.resolved_lr_warmup,
        )
        self.k_cpt_set = torch.tensor(config.resolved_k_cpt_set, dtype=torch.float32)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "generator": self.generator.get_state(),
            "loader": self.data.loader.state_dict(),
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "loss_parameters": [p.detach().cpu() for p in self.strategy.extra_parameters()],
        }

    def verify_finite(self) -> None:
        """Stop, saving nothing, unless the weights and the training loss they give are finite.

        Checked before every evaluation and checkpoint: the losses read so far were computed
        on earlier weights, so the latest update is checked by recomputing the loss of the
        latest batch on the current weights (no gradients; batch-norm statistics restored).
        """
        self.read_losses()
        state = (*self.tree.parameters(), *self.tree.buffers())
        checks = [torch.isfinite(t).all() for t in state if t.is_floating_point()]
        finite = bool(torch.stack(checks).all())
        loss = 0.0  # no batch yet (a fresh or resumed trainer): the weights alone are checked
        if finite and self._last_batch is not None:
            buffers = [b.clone() for b in self.tree.buffers()]
            with torch.no_grad():
                loss = float(self.objective(*self._last_batch)[0].loss)
            with torch.no_grad():
                for b, saved in zip(self.tree.buffers(), buffers, strict=True):
                    b.copy_(saved)
        if not finite or not math.isfinite(loss):
            what = "non-finite weights" if not finite else f"a loss of {loss}"
            self._stop(f"training diverged by iteration {self.step} ({what})")

    def _stop(self, reason: str) -> None:
        """Raise the error that ends a diverged run, naming the checkpoint it leaves."""
        path = self.out_dir / CHECKPOINT_FILE
        if self.saved_step is not None and path.exists():
            kept = f"the last good checkpoint, {path} (iteration {self.saved_step}), is kept"
        else:
            kept = "no checkpoint was saved"
        raise DynrouteError(f"{reason}; stopped: {kept}. Try a lower `lr`.")

    def save(self) -> None:
        self.verify_finite()  # never checkpoint weights a non-finite loss has touched
        checkpoint.save(
            self.out_dir / CHECKPOINT_FILE,
            self.tree,
            optimizer_state=self.optimizer.state_dict(),
            extra=self.state(),
        )
        self.saved_step = self.step

    def load(self) -> None:
        path = self.out_dir / CHECKPOINT_FILE
        source = f"checkpoint {path}"
        raw = checkpoint.load_checkpoint(path, map_location="cpu")
        if raw["spec"] != self.tree.spec:
            raise DynrouteError(
                f"{source} holds a {raw['spec']} model, not the run's {self.tree.spec}"
            )
        checkpoint.check_state_dict(self.tree, raw["state_dict"], source=source)
        checkpoint.check_finite(raw["state_dict"], source)
        try:
            self.tree.load_state_dict(raw["state_dict"])
            self.optimizer.load_state_dict(raw["optimizer_state"])
            extra = raw["extra"]
            self.generator.set_state(extra["generator"])
            self.data.loader.load_state_dict(extra["loader"])
            step, seconds = int(extra["step"]), float(extra["train_seconds"])
            saved = extra.get("loss_parameters", [])
            own = self.strategy.extra_parameters()
            if len(saved) != len(own) or any(
                s.shape != p.shape for s, p in zip(saved, own, strict=False)
            ):
                raise ValueError("the loss's own parameters do not match this run's")
            with torch.no_grad():
                for p, value in zip(own, saved, strict=True):
                    p.copy_(value)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DynrouteError(
                f"{source} holds a damaged training state ({type(exc).__name__}: {exc}); "
                "pass `overwrite` to start the run over"
            ) from None
        if not 0 <= step <= self.config.iterations:
            raise DynrouteError(f"{source} is at iteration {step}, outside this run")
        self.step = self.saved_step = step
        self.train_seconds = seconds
        records = truncate_metrics(self.out_dir / METRICS_FILE, self.step)
        if records and records[-1]["iteration"] == self.step:
            self.last_eval = records[-1]  # a finished run resumed: nothing to evaluate again

    # ------------------------------------------------------------------ batches
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """An augmented batch and its k_cpt (drawn per example for dynamic k_cpt)."""
        images, labels = self.data.loader.next_batch()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.config.dynamic_k_cpt:
            pick = torch.randint(len(self.k_cpt_set), (len(labels),), generator=self.generator)
            return images, labels, to_device(self.k_cpt_set[pick], self.device)
        return images, labels, self.config.k_cpt

    # ------------------------------------------------------------------ steps
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        lr, tau = self.schedule.lr_at(self.step), self.schedule.tau_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels, k_cpt = self.next_batch()
        self.strategy.set_progress(self.step / cfg.iterations)
        self.tree.train()
        # A tensor (a fill, not a host copy) so that tau's decay does not recompile.
        tau_value = torch.full((), tau, device=self.device) if cfg.compile else tau
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        self._last_batch = (images, labels, k_cpt, tau_value)
        out, scales = self._objective(images, labels, k_cpt, tau_value)
        # A copy: a CUDA-graph replay overwrites its outputs on the next step.
        self._unread_losses.append((self.step, out.loss.detach().clone()))
        if len(self._unread_losses) >= self.loss_read_every:
            self.read_losses()
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if scales is not None:
            apply_talr(self.tree, scales)
        self.optimizer.step()
        self.step += 1
        return {"loss": self._last_loss, "lr": lr, "tau": tau}

    def read_losses(self) -> float:
        """Read the losses queued since the last read; stop at the first non-finite one.

        Returns the latest loss (NaN before the first step).
        """
        if self._unread_losses:
            iterations = [iteration for iteration, _ in self._unread_losses]
            values = torch.stack([loss for _, loss in self._unread_losses]).tolist()
            self._unread_losses.clear()
            for iteration, value in zip(iterations, values, strict=True):
                if not math.isfinite(value):
                    self._stop(f"the loss became {value} at iteration {iteration}")
            self._last_loss = values[-1]
        return self._last_loss

    def objective(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        k_cpt: torch.Tensor | float,
        tau: torch.Tensor | float,
    ) -> tuple[LossOutput, torch.Tensor | None]:
        """Dense forward pass (bf16 autocast if asked, on CUDA or a CPU with native bf16), the
        strategy's loss and the TALR gradient scales (computed here so that ``--compile``
        fuses them too)."""
        use_bf16 = self.bf16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            dense = self.tree.forward_dense(
                images, k_cpt if self.config.dynamic_k_cpt else None, self._gradient_scales
            )
        if use_bf16:  # the loss in float32: k_cpt * MACs would lose digits in bf16
            dense = DenseOutput(
                {i: s.float() for i, s in dense.scores.items()},
                {i: z.float() for i, z in dense.logits.items()},
            )
        out = self.strategy.loss(self.tree, dense, labels, k_cpt, tau)
        return out, talr_scales(out.arrival) if self.config.talr else None

    def evaluate(self) -> dict[str, Any]:
        """Hard-routing statistics on every evaluation split (and every k_cpt if dynamic)."""
        self.verify_finite()
        record: dict[str, Any] = {"iteration": self.step, "train_seconds": self.train_seconds}
        for name, split in self.data.evaluation.items():
            if self.config.dynamic_k_cpt:  # the columns once, the routers at every k_cpt
                k_values = list(self.config.resolved_k_cpt_set)
                by_k = routing_statistics_by_k(self.tree, split.images, split.labels, k_values)
                record[name] = {repr(k): s.to_dict() for k, s in zip(k_values, by_k, strict=True)}
            else:
                record[name] = routing_statistics(self.tree, split.images, split.labels).to_dict()
        return record

    def _log(self, record: dict[str, Any]) -> None:
        path = self.out_dir / METRICS_FILE
        append_line(path, metrics_line(record, path))  # whole, or not at all
        self.last_eval = record

    def headline(self) -> dict[str, float]:
        """Accuracy and mean MACs of the first evaluation split, for the progress bar."""
        if not self.last_eval or not self.data.evaluation:
            return {}
        stats = self.last_eval[next(iter(self.data.evaluation))]
        if self.config.dynamic_k_cpt:
            stats = next(iter(stats.values()))
        return {"accuracy": stats["accuracy"], "mean_macs": stats["mean_macs"]}

    def run(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to the configured number of iterations; returns the summary.

        The run directory is locked while this runs: a second process is refused.
        """
        with run_lock(self.out_dir):
            return self._run(resume, overwrite)

    def _run(self, resume: bool, overwrite: bool) -> dict[str, Any]:
        run_config, has_checkpoint = prepare_run_dir(
            self.out_dir, self.config, resume, overwrite, self.record
        )
        self.use_config(run_config)
        cfg = self.config
        if has_checkpoint:
            self.load()
        else:  # a fresh start: metrics of a run killed before its first checkpoint go
            (self.out_dir / METRICS_FILE).unlink(missing_ok=True)
        bar = tqdm(
            total=cfg.iterations,
            initial=self.step,
            disable=not self.progress,
            desc=self.out_dir.name,
            dynamic_ncols=True,
        )
        try:
            while self.step < cfg.iterations:
                started = time.perf_counter()
                info = self.train_step()
                elapsed = time.perf_counter() - started
                self.train_seconds += elapsed
                if cfg.compile and self.compile_seconds is None:
                    self.compile_seconds = elapsed
                    bar.write(f"compiled in {elapsed:.1f} s (the first step)", file=sys.stderr)
                if self.step % cfg.resolved_eval_every == 0 or self.step == cfg.iterations:
                    self._log(self.evaluate())
                if self.step % cfg.resolved_checkpoint_every == 0 or self.step == cfg.iterations:
                    self.save()
                head = self.headline()  # empty until the first evaluation
                bar.set_postfix(
                    loss=f"{info['loss']:.3f}" if math.isfinite(info["loss"]) else "-",  # unread
                    tau=f"{info['tau']:.3g}",
                    lr=f"{info['lr']:.3g}",
                    acc=f"{head['accuracy']:.3f}" if head else "-",
                    macs=f"{head['mean_macs'] / 1e6:.2f}M" if head else "-",
                    refresh=False,
                )
                bar.update(1)
        finally:
            bar.close()
        if self.last_eval is None or self.last_eval["iteration"] != self.step:
            self._log(self.evaluate())
        summary = {
            "config": cfg.to_dict(),
            "iterations": self.step,
            "train_seconds": self.train_seconds,
            "compile_seconds": self.compile_seconds,
            "device": str(self.device),
            "final": self.last_eval,
            "spec": self.tree.spec,
            "class_names": list(self.data.class_names),
        }
        if self.record is not None:
            summary["data"] = self.record.to_dict()
        write_json_atomic(self.out_dir / SUMMARY_FILE, summary, indent=2)
        return summary
