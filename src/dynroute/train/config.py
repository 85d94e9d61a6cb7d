"""Every hyperparameter of a training run, validated before any work starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

from dynroute.core.checks import NON_NEGATIVE, POSITIVE, Bounds
from dynroute.core.errors import DynrouteError
from dynroute.nn.registry import MAX_IMAGE_SIZE, MAX_WIDTH, MIN_IMAGE_SIZE
from dynroute.train.choices import (
    CRITIC_TARGETS,
    ERROR_MEASURES,
    STRATEGY_NAMES,
    TEACHERS,
    WEIGHT_SCHEDULES,
)
from dynroute.train.schedules import PAPER_LR_HALF_LIFE, PAPER_TAU_HALF_LIFE, scaled_half_life

#: Splits a run can evaluate on.
SPLITS = ("train", "validation", "test")
#: The paper's k_cpt set (docs/method.md §5).
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


MAX_ITERATIONS = 10**9
MAX_BATCH = 1 << 16


def option(
    default: Any,
    help: str,
    *,
    bounds: Bounds | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    kind: type | None = None,
    integer: bool = False,
    many: bool = False,
    execution: bool = False,
) -> Any:
    """A ``TrainConfig`` field with its help text, type and valid range: one place per option.

    ``kind`` is the (element) type where the default does not show it (``None``);
    ``many`` marks a tuple of values (comma-separated on the command line); ``choices``
    may be a function, for registries that grow (models). ``execution`` marks an option
    that says how a run executes, not what it computes (``EXECUTION_ONLY``): a run may
    resume under another value, and two runs that differ only there trained the same net.
    """
    metadata = {
        "help": help,
        "bounds": bounds,
        "choices": choices,
        "kind": kind,
        "integer": integer,
        "many": many,
        "execution": execution,
    }
    return field(default=default, metadata=metadata)


def option_choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of option ``name``, if it has a fixed set."""
    choices = _FIELDS[name].metadata["choices"]
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def _model_names() -> list[str]:
    """Every registered model (the catalogue loads the networks: only called on demand)."""
    from dynroute.nn.models import model_names

    return model_names()


@dataclass
class TrainConfig:
    """One network's training run. ``None`` means "derive from the run length"."""

    dataset: str = option(
        "hybrid",
        "mnist, cifar10, cifar5, cifar2, hybrid, or your own: folder:PATH (class folders of "
        "images) or npz:PATH (x_train, y_train, x_test, y_test)",
    )
    image_size: int = option(
        32,
        "images are resized to this square size (your own datasets; the paper's are 32)",
        bounds=Bounds(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        integer=True,
    )
    test_fraction: float = option(
        0.2,
        "folder:PATH with one class tree: the share of each class held out for testing",
        bounds=Bounds(0, 1, low_open=True, high_open=True),
    )
    model: str = option("chain", "a registered model (dynroute model list)", choices=_model_names)
    width: int = option(
        1, "channel multiplier of every convolution", bounds=Bounds(1, MAX_WIDTH), integer=True
    )
    pretrained_weights: str | None = option(
        None,
        "load a local torchvision state dict file (e.g. resnet18-f37072fd.pth) into the stages "
        "of a resnet18-* or mobilenet-v3-small-* model before training; nothing is downloaded, "
        "and its classifier is not used",
        kind=str,
    )
    strategy: str = option(
        "actor",
        "how the loss is formed (the command line trains a static model as static)",
        choices=STRATEGY_NAMES,
    )
    k_cpt: float = option(
        0.0, "cost of one multiply-accumulate, in units of cross-entropy", bounds=Bounds(0, 1)
    )
    dynamic_k_cpt: bool = option(
        False, "feed k_cpt to every router and draw it per example from the k_cpt set"
    )
    k_cpt_set: tuple[float, ...] | None = option(
        None,
        "comma-separated k_cpt values for dynamic k_cpt (default: the paper's 8)",
        bounds=Bounds(0, 1),
        kind=float,
        many=True,
    )
    iterations: int = option(
        1500, "training iterations (batches)", bounds=Bounds(1, MAX_ITERATIONS), integer=True
    )
    batch_size: int = option(128, "examples per batch", bounds=Bounds(1, MAX_BATCH), integer=True)
    lr: float | None = option(
        None,
        "initial learning rate (default 0.1 for >= 20,000 iterations, else 0.04)",
        bounds=Bounds(0, 10, low_open=True),
        kind=float,
    )
    lr_half_life: float | None = option(
        None,
        "iterations per halving of the lr (default iterations / 8 for >= 20,000 iterations, "
        "else iterations / 4)",
        bounds=POSITIVE,
        kind=float,
    )
    lr_warmup: int | None = option(
        None,
        "iterations over which the lr ramps up linearly from ~0 (default 0 for >= 20,000 "
        "iterations, else iterations / 10); at most the iterations",
        bounds=Bounds(0, MAX_ITERATIONS),
        kind=int,
        integer=True,
    )
    tau: float | None = option(
        None,
        "initial routing temperature (default 1.0 actor, 0.1 critic)",
        bounds=Bounds(0, 1e3, low_open=True),
        kind=float,
    )
    tau_half_life: float | None = option(
        None, "iterations per halving of tau (default iterations / 4)", bounds=POSITIVE, kind=float
    )
    momentum: float = option(0.9, "SGD momentum", bounds=Bounds(0, 1, high_open=True))
    k_dec: float = option(0.01, "weight of the actor's decisiveness term", bounds=NON_NEGATIVE)
    k_cre: float = option(0.001, "weight of the critic's regression term", bounds=NON_NEGATIVE)
    k_l2: float = option(1e-4, "weight of the path-weighted L2 term", bounds=NON_NEGATIVE)
    epsilon: float = option(
        1e-6, "exploration floor mixed into the training policy", bounds=Bounds(0, 1)
    )
    critic_target: str = option(
        "pragmatic", "what a critic's router regresses", choices=CRITIC_TARGETS
    )
    error_measure: str = option(
        "cross-entropy", "the error inside critic targets", choices=ERROR_MEASURES
    )
    exit_weights: tuple[float, ...] | None = option(
        None,
        "multi-exit or actor: comma-separated weight of each exit's loss, in exit order "
        "(default: equal)",
        bounds=Bounds(0, 1e6),
        kind=float,
        many=True,
    )
    exit_weight_schedule: str = option(
        "constant",
        "multi-exit or actor: constant exit weights, or ramp (the early exits' weights grow "
        "from 0 over the first half of the run; the deepest exit's stays)",
        choices=WEIGHT_SCHEDULES,
    )
    learned_exit_weights: bool = option(
        False, "multi-exit: learn each exit's weight (uncertainty weighting, Kendall et al. 2018)"
    )
    distill: float = option(
        0.0,
        "multi-exit or actor: self-distillation, the share of each exit's loss that matches the "
        "teacher's softened answer (0: off; 0.5 is a common choice)",
        bounds=Bounds(0, 1, high_open=True),
    )
    distill_temperature: float = option(
        3.0, "with --distill: the softening temperature", bounds=Bounds(0.1, 100)
    )
    distill_teacher: str = option(
        "deepest",
        "with --distill: the deepest exit, or the ensemble of every exit",
        choices=TEACHERS,
    )
    gradient_equilibrium: bool = option(
        False,
        "multi-exit or actor: each node's output gets the mean of its exits' gradients, not the "
        "sum (Li et al. 2019); multi-exit losses add up",
    )
    boost: float = option(
        0.0,
        "boosted exits: each exit adds this share of the answer of the exit before it and "
        "learns what that one got wrong (BoostNet; 0: off, 1: the plain additive model)",
        bounds=Bounds(0, 1),
    )
    talr: bool = option(True, "throughput-adjusted learning rates")
    regularise_policy: bool = option(
        False, "let the L2 and k_dec terms' gradient flow through p_train"
    )
    augment: bool = option(True, "shift/flip augmentation")
    sampling: str = option(
        "replacement", "replacement (the paper) or epoch", choices=("replacement", "epoch")
    )
    validation_size: int = option(
        0,
        "training examples held out for validation",
        bounds=Bounds(0, MAX_ITERATIONS),
        integer=True,
    )
    eval_every: int | None = option(
        None,
        "iterations between evaluations (default iterations / 16)",
        bounds=Bounds(1, MAX_ITERATIONS),
        kind=int,
        integer=True,
        execution=True,
    )
    eval_splits: tuple[str, ...] = option(
        ("test",),
        "comma-separated splits evaluated during training",
        choices=SPLITS,
        kind=str,
        many=True,
    )
    checkpoint_every: int | None = option(
        None,
        "iterations between checkpoints (default iterations / 10)",
        bounds=Bounds(1, MAX_ITERATIONS),
        kind=int,
        integer=True,
        execution=True,
    )
    seed: int = option(0, "random seed", bounds=Bounds(0, 2**63 - 1), integer=True)
    device: str = option("auto", "cpu, cuda, cuda:N or auto", execution=True)
    bf16: bool = option(
        False,
        "bfloat16 autocast: on CUDA, or on a CPU with native bf16 instructions (the layout "
        "that is fast there, chosen by the CPU's flags); elsewhere a warning and float32",
    )
    compile: bool = option(False, "torch.compile the forward pass and the loss", execution=True)
    compile_mode: str = option(
        "default",
        "with --compile: default, or reduce-overhead (adds CUDA graphs on a GPU)",
        choices=COMPILE_MODES,
        execution=True,
    )
    channels_last: bool = option(
        True, "channels-last memory layout (faster convolutions on CPU and GPU)", execution=True
    )

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
        """Raise ``DynrouteError`` naming the option on any invalid value; return self.

        Each option's own range and choices come from its field; the checks below are the
        ones that relate several options.
        """
        for f in fields(self):
            _check_field(f, getattr(self, f.name))

        def fail(msg: str) -> None:
            raise DynrouteError(msg)

        from dynroute.data.datasets import dataset_names, is_dataset_name
        from dynroute.nn.models import is_static_model
        from dynroute.train.strategies import make_strategy

        if not is_dataset_name(self.dataset):
            fail(
                f"`dataset` must be one of {', '.join(dataset_names())}, or folder:PATH or "
                f"npz:PATH; got {self.dataset!r}"
            )
        static_model = is_static_model(self.model)
        if static_model != (self.strategy == "static"):
            fail(
                f"model {self.model!r} needs the "
                f"{'static' if static_model else 'actor or critic'} strategy, "
                f"not {self.strategy!r}"
            )
        if static_model and (self.k_cpt != 0 or self.dynamic_k_cpt):
            fail("k_cpt does not apply to a static network: it has no routing decisions")
        if self.strategy == "multi-exit" and (self.k_cpt != 0 or self.dynamic_k_cpt):
            fail("k_cpt does not apply to multi-exit training: its routers do not learn")
        recipe = [name for name in RECIPE_OPTIONS if getattr(self, name) != _FIELDS[name].default]
        if recipe and self.strategy not in ("multi-exit", "actor"):
            fail(f"`{recipe[0]}` applies to the multi-exit and actor strategies only")
        if self.learned_exit_weights and self.strategy != "multi-exit":
            fail("`learned_exit_weights` applies to the multi-exit strategy only")
        if not self.distill and any(
            getattr(self, name) != _FIELDS[name].default
            for name in ("distill_temperature", "distill_teacher")
        ):
            fail("`distill_temperature` and `distill_teacher` apply only with `distill` > 0")
        if self.boost and static_model:
            fail("`boost` needs a model with several exits")
        if self.exit_weights is not None and not sum(self.exit_weights) > 0:
            fail("`exit_weights` needs at least one positive weight")
        if self.k_cpt_set is not None and not self.dynamic_k_cpt:
            fail("a k_cpt set is only used with dynamic k_cpt (`dynamic_k_cpt`)")
        if self.dynamic_k_cpt and self.k_cpt != 0:
            fail("with dynamic k_cpt the cost is drawn from the k_cpt set; do not also pass k_cpt")
        if self.dynamic_k_cpt and self.k_cpt_set is not None and len(self.k_cpt_set) == 0:
            fail("`k_cpt_set` needs at least one value")
        if self.lr_warmup is not None and self.lr_warmup > self.iterations:
            fail(
                f"`lr_warmup` must be at most the iterations ({self.iterations}), "
                f"got {self.lr_warmup}"
            )
        if self.compile_mode != "default" and not self.compile:
            fail("`compile_mode` applies only with `compile`")
        if self.device not in ("auto", "cpu", "cuda") and not (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        ):
            fail(f"`device` must be cpu, cuda, cuda:N or auto, not {self.device!r}")
        if not self.eval_splits:
            fail("`eval_splits` needs at least one split")
        if "validation" in self.eval_splits and self.validation_size == 0:
            fail("evaluating on 'validation' needs `validation_size` > 0")
        make_strategy(self.strategy, **self.strategy_options())  # the strategy's own checks
        return self

    def strategy_options(self) -> dict[str, Any]:
        """Keyword arguments for ``make_strategy``: the options this strategy reads."""
        from dynroute.train.strategies import STRATEGIES

        if self.strategy not in STRATEGIES:
            return {}
        return {
            name: getattr(self, name)
            for name in STRATEGIES[self.strategy].__dataclass_fields__
            if name in _FIELDS
        }

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
        for name in ("k_cpt_set", "eval_splits"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        return cls(**data)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
#: The exit-training recipe's options (``dynroute.train.recipes``), boosting apart.
RECIPE_OPTIONS = (
    "exit_weights",
    "exit_weight_schedule",
    "learned_exit_weights",
    "distill",
    "distill_temperature",
    "distill_teacher",
    "gradient_equilibrium",
)
#: Options that say how a run executes, not what it computes (marked on their fields).
EXECUTION_ONLY = tuple(name for name, f in _FIELDS.items() if f.metadata["execution"])


def _check_field(f: Field, value: Any) -> None:
    """One option's type, range and choices; the message names the command-line option."""
    flag = f"`{f.name}`"
    meta = f.metadata
    if value is None and f.default is None:
        return
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise DynrouteError(f"{flag} must be true or false, got {value!r}")
        return
    if meta["many"] and not isinstance(value, tuple):
        raise DynrouteError(f"{flag} must be a list, got {value!r}")
    for item in value if meta["many"] else (value,):
        bounds = meta["bounds"]
        if bounds is not None:
            numeric = isinstance(item, (int, float)) and not isinstance(item, bool)
            if not numeric or (meta["integer"] and not float(item).is_integer()):
                kind = "an integer" if meta["integer"] else "a number"
                raise DynrouteError(f"{flag} must be {kind}, got {item!r}")
            if not bounds.contains(item):  # an int stays exact (2**63 - 1 is no float)
                raise DynrouteError(
                    f"{flag} must be {bounds.describe(meta['integer'])}, got {item!r}"
                )
        choices = option_choices(f.name)
        if choices is not None and item not in choices:
            raise DynrouteError(f"{flag} must be one of {', '.join(choices)}; got {item!r}")
        if bounds is None and choices is None and not isinstance(item, str):
            raise DynrouteError(f"{flag} must be text, got {item!r}")
