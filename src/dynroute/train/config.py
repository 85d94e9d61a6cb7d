"""Every hyperparameter of a training run, validated before any work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.train.schedules import PAPER_LR_HALF_LIFE, PAPER_TAU_HALF_LIFE, scaled_half_life

#: The paper's k_cpt set (REFERENCE §4).
PAPER_K_CPT_SET = (0.0, 1e-9, 2e-9, 4e-9, 8e-9, 1.6e-8, 3.2e-8, 6.4e-8)
PAPER_LR = 0.1
#: Short runs diverge at the paper's lr 0.1 (the static-8 net ends at 61 % on hybrid after
#: 1,500 iterations). They train best at 0.04 after a linear warm-up over their first tenth;
#: without it the deep static nets stall early. The paper halves its lr 8 times per run;
#: a short run that does so has learnt nearly all it will by a third of the way, before
#: its routers have settled, so short runs halve it 4 times (README, "How the short-run
#: recipe was chosen"). Runs shorter than SHORT_RUN_ITERATIONS use this recipe, longer
#: ones the paper's.
SHORT_RUN_ITERATIONS = 20_000
SHORT_RUN_LR = 0.04
SHORT_RUN_WARMUP_FRACTION = 0.1
SHORT_RUN_LR_HALVINGS = 4
#: torch.compile modes for --compile-mode; reduce-overhead adds CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead")
#: Fields whose ``None`` means "use the code's default"; ``TrainConfig.resolved`` fills them
#: in, so that a run directory records the schedule it actually runs.
DEFAULTED_FIELDS = (
    "lr",
    "lr_half_life",
    "lr_warmup",
    "tau",
    "tau_half_life",
    "eval_every",
    "checkpoint_every",
    "k_cpt_set",
)


def default_learning_rate(iterations: int) -> float:
    """The paper's 0.1 for long runs, SHORT_RUN_LR for short ones."""
    return PAPER_LR if iterations >= SHORT_RUN_ITERATIONS else SHORT_RUN_LR


def default_lr_half_life(iterations: int) -> float:
    """The paper's shape (1/8 of the run) for long runs; 1/SHORT_RUN_LR_HALVINGS for short ones."""
    if iterations >= SHORT_RUN_ITERATIONS:
        return scaled_half_life(PAPER_LR_HALF_LIFE, iterations)
    return iterations / SHORT_RUN_LR_HALVINGS


def default_lr_warmup(iterations: int) -> int:
    """No warm-up in the paper's long runs; a tenth of the run for short ones."""
    if iterations >= SHORT_RUN_ITERATIONS:
        return 0
    return round(SHORT_RUN_WARMUP_FRACTION * iterations)


@dataclass
class TrainConfig:
    """One network's training run. ``None`` means "derive from the run length"."""

    dataset: str = "hybrid"
    model: str = "chain"
    width: int = 1
    strategy: str = "actor"
    k_cpt: float = 0.0
    dynamic_k_cpt: bool = False
    k_cpt_set: tuple[float, ...] | None = None
    iterations: int = 1500
    batch_size: int = 128
    lr: float | None = None
    lr_half_life: float | None = None
    lr_warmup: int | None = None
    tau: float | None = None
    tau_half_life: float | None = None
    momentum: float = 0.9
    k_dec: float = 0.01
    k_cre: float = 0.001
    k_l2: float = 1e-4
    epsilon: float = 1e-6
    critic_target: str = "pragmatic"
    error_measure: str = "cross-entropy"
    talr: bool = True
    regularise_policy: bool = False
    augment: bool = True
    sampling: str = "replacement"
    validation_size: int = 0
    eval_every: int | None = None
    eval_splits: tuple[str, ...] = ("test",)
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = True

    # ---------------------------------------------------------------- derived values
    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else default_learning_rate(self.iterations)

    @property
    def resolved_lr_warmup(self) -> int:
        return self.lr_warmup if self.lr_warmup is not None else default_lr_warmup(self.iterations)

    @property
    def resolved_lr_half_life(self) -> float:
        if self.lr_half_life is not None:
            return self.lr_half_life
        return default_lr_half_life(self.iterations)

    @property
    def resolved_tau(self) -> float:
        if self.tau is not None:
            return self.tau
        return 0.1 if self.strategy == "critic" else 1.0

    @property
    def resolved_tau_half_life(self) -> float:
        if self.tau_half_life is not None:
            return self.tau_half_life
        return scaled_half_life(PAPER_TAU_HALF_LIFE, self.iterations)

    @property
    def resolved_eval_every(self) -> int:
        # The paper evaluates 32 times per run (every 2,500 of 80,000 iterations); 16 points
        # draw the same dataflow-over-training picture at half the evaluation cost.
        return self.eval_every or max(1, self.iterations // 16)

    @property
    def resolved_checkpoint_every(self) -> int:
        return self.checkpoint_every or max(1, self.iterations // 10)

    @property
    def resolved_k_cpt_set(self) -> tuple[float, ...]:
        return tuple(self.k_cpt_set) if self.k_cpt_set else PAPER_K_CPT_SET

    def resolved(self) -> TrainConfig:
        """A copy with every field of ``DEFAULTED_FIELDS`` set to the value the run uses.

        A new run directory stores this copy, so resuming the run after the code's defaults
        change continues the schedule it started with. The k_cpt set is filled in only with
        dynamic k_cpt: a fixed-k_cpt run has none.
        """
        values = {name: getattr(self, f"resolved_{name}") for name in DEFAULTED_FIELDS}
        if not self.dynamic_k_cpt:
            values["k_cpt_set"] = self.k_cpt_set
        return replace(self, **values)

    # ---------------------------------------------------------------- validation
    def validate(self) -> TrainConfig:
        """Raise ``DynrouteError`` on any inconsistent option; return self."""
        from dynroute.nn.registry import model_names
        from dynroute.train.strategies import STRATEGIES

        def fail(msg: str) -> None:
            raise DynrouteError(msg)

        if self.model not in model_names():
            fail(f"unknown model {self.model!r}; choose from {', '.join(model_names())}")
        if self.strategy not in STRATEGIES:
            fail(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        static_model = self.model.startswith("static-")
        if static_model != (self.strategy == "static"):
            fail(
                f"model {self.model!r} needs the "
                f"{'static' if static_model else 'actor or critic'} strategy, "
                f"not {self.strategy!r}"
            )
        for name in ("k_cpt", "k_dec", "k_cre", "k_l2", "epsilon", "momentum"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                fail(f"{name} must be a finite number >= 0, got {value}")
        if static_model and (self.k_cpt != 0 or self.dynamic_k_cpt):
            fail("k_cpt does not apply to a static network: it has no routing decisions")
        if self.k_cpt_set and not self.dynamic_k_cpt:
            fail("a k_cpt set is only used with dynamic k_cpt (--dynamic-k-cpt)")
        if self.dynamic_k_cpt and self.k_cpt != 0:
            fail("with dynamic k_cpt the cost is drawn from the k_cpt set; do not also pass k_cpt")
        if self.dynamic_k_cpt and self.k_cpt_set is not None and len(self.k_cpt_set) == 0:
            fail("dynamic k_cpt needs a non-empty k_cpt set")
        if any(k < 0 or not math.isfinite(k) for k in self.resolved_k_cpt_set):
            fail("every k_cpt in the set must be a finite number >= 0")
        if not 0 <= self.resolved_lr_warmup <= self.iterations:
            fail(f"lr warm-up must be between 0 and the iterations, got {self.lr_warmup}")
        if self.iterations <= 0:
            fail(f"iterations must be positive, got {self.iterations}")
        if self.batch_size <= 0:
            fail(f"batch size must be positive, got {self.batch_size}")
        if self.width < 1:
            fail(f"width must be a positive integer, got {self.width}")
        for name in ("resolved_lr", "resolved_lr_half_life", "resolved_tau_half_life"):
            if not getattr(self, name) > 0:
                fail(f"{name.removeprefix('resolved_')} must be positive")
        if not self.resolved_tau > 0:
            fail(f"tau must be positive, got {self.resolved_tau}")
        if self.critic_target not in ("pragmatic", "optimistic"):
            fail(f"critic target must be pragmatic or optimistic, not {self.critic_target!r}")
        if self.error_measure not in ("cross-entropy", "classification"):
            fail(f"error measure must be cross-entropy or classification, not {self.error_measure}")
        if self.sampling not in ("replacement", "epoch"):
            fail(f"sampling must be replacement or epoch, not {self.sampling!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            fail(f"device must be cpu, cuda or auto, not {self.device!r}")
        if self.compile_mode not in COMPILE_MODES:
            modes = ", ".join(COMPILE_MODES)
            fail(f"compile mode must be one of {modes}, not {self.compile_mode!r}")
        if self.compile_mode != "default" and not self.compile:
            fail("--compile-mode applies only with --compile")
        if self.validation_size < 0:
            fail("validation size must be >= 0")
        for split in self.eval_splits:
            if split not in ("train", "validation", "test"):
                fail(f"unknown evaluation split {split!r}")
        if "validation" in self.eval_splits and self.validation_size == 0:
            fail("evaluating on 'validation' needs --validation-size > 0")
        return self

    def strategy_options(self) -> dict[str, Any]:
        """Keyword arguments for ``make_strategy``."""
        options: dict[str, Any] = {"k_l2": self.k_l2, "epsilon": self.epsilon}
        if self.strategy in ("actor", "static"):
            options.update(k_dec=self.k_dec, regularise_policy=self.regularise_policy)
        else:
            options.update(
                target=self.critic_target, error_measure=self.error_measure, k_cre=self.k_cre
            )
        return options

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["k_cpt_set"] = list(self.k_cpt_set) if self.k_cpt_set else None
        data["eval_splits"] = list(self.eval_splits)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DynrouteError(f"unknown training options: {', '.join(unknown)}")
        data = dict(data)
        if data.get("k_cpt_set") is not None:
            data["k_cpt_set"] = tuple(data["k_cpt_set"])
        if "eval_splits" in data:
            data["eval_splits"] = tuple(data["eval_splits"])
        return cls(**data)
