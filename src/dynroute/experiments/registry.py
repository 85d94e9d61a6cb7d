"""Named experiments: every curve of the paper, expanded into the networks that draw it.

An experiment fixes a dataset, model family, strategy and the options that make it a
variant (docs/method.md §7); a scale preset fixes how long each network trains. Expanding
the pair yields ``Network`` objects whose ``TrainConfig`` is exactly what
``dynroute train`` would run with the same options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.train.config import PAPER_K_CPT_SET, TrainConfig


@dataclass(frozen=True)
class Scale:
    """How long and how large every network of a sweep trains.

    ``eval_subset`` evaluates on that many seeded test images instead of the whole
    split; only ``smoke`` uses it, so CI stays in seconds. Training is unaffected.
    ``options`` are training options of every network at this scale (its recipe);
    an experiment's own options win where both set one. ``wide`` thins the experiments
    of width > 1, whose networks cost width² as much: every ``wide.every``-th static depth
    and k_cpt value, and ``iterations // width`` iterations (``None``: all of them).
    ``k_cpt_every`` > 1 trains every such k_cpt value of the paper's set, starting at 0, in
    the routed experiments not named in ``full``, whose curves only feed mean-gain claims.
    ``k_cpt_kept`` names, per experiment, the k_cpt values it trains at this scale instead.
    """

    name: str
    iterations: int
    batch_size: int = 128
    eval_every: int | None = None
    eval_subset: int | None = None
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    wide: WideSubset | None = None
    k_cpt_every: int = 1
    full: tuple[str, ...] = ()
    k_cpt_kept: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class WideSubset:
    """How a scale thins the wide (width > 1) experiments; see ``Scale``."""

    every: int = 2
    first: int = 1  # index of the first static depth / k_cpt value kept


#: The ``cpu`` scale's recipe (README, "Routing like the paper on a CPU"): the paper's
#: learning rate without warm-up, halved 3 times per run (8,000 iterations); tau at the
#: paper's slow decay
#: (20,000 iterations per halving, so about 1 throughout); and an exploration floor of 0.5,
#: so that every exit keeps learning from every example while the routers decide. 5,000
#: training images are held out, so every network's operating point can be chosen
#: (``dynroute calibrate``) without touching the test set.
CPU_RECIPE: dict[str, Any] = {
    "lr": 0.1,
    "lr_warmup": 0,
    "lr_half_life": 2667,
    "tau_half_life": 20_000,
    "epsilon": 0.5,
    "validation_size": 5000,
}

SCALES: dict[str, Scale] = {
    scale.name: scale
    for scale in (
        Scale(
            "smoke",
            iterations=4,
            batch_size=16,
            eval_every=2,
            eval_subset=500,
            description="seconds per network; checks the pipeline, not the science (CI)",
        ),
        Scale(
            "quick",
            iterations=1500,
            description="the core of figure 5 in about 2 hours on a 2-core CPU",
        ),
        Scale(
            "cpu",
            iterations=8000,
            eval_every=500,
            description="routes like the paper (easy images leave first) on a 2-core CPU: the "
            "paper's lr and tau, a strong exploration floor; ablations, wide nets and tree thinned",
            options=CPU_RECIPE,
            wide=WideSubset(),
            k_cpt_every=2,
            full=("hybrid-actor", "cifar10-resnet18-actor"),
            # A tree costs 5-7 chains: k_cpt 0 (its "unconstrained" point) and the 3 largest
            # values (the tight budgets of the tree-vs-chain claim).
            k_cpt_kept={"hybrid-actor-tree": (0.0, 1.6e-8, 3.2e-8, 6.4e-8)},
        ),
        Scale("paper", iterations=80_000, description="the paper's 80,000 iterations"),
    )
}


@dataclass(frozen=True)
class Experiment:
    """One curve of the paper: a family of networks differing only in budget.

    A static experiment names the routed model whose static baselines it trains
    (``model="chain"``: static-1 ... static-8).
    """

    name: str
    dataset: str
    strategy: str
    model: str = "chain"
    width: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    dynamic_k_cpt: bool = False
    description: str = ""
    k_cpt_set: tuple[float, ...] | None = None

    @property
    def is_static(self) -> bool:
        return self.strategy == "static"

    @property
    def k_cpt_values(self) -> tuple[float, ...]:
        """The paper's k_cpt set (or the experiment's own); wider nets cost width² more per
        MAC-equivalent, so ÷ width²."""
        return tuple(k / self.width**2 for k in self.k_cpt_set or PAPER_K_CPT_SET)


@dataclass(frozen=True)
class Network:
    """One training run of a sweep: where its results go and what it trains."""

    experiment: str
    name: str
    config: TrainConfig
    eval_subset: int | None = None

    @property
    def label(self) -> str:
        return f"{self.experiment}/{self.name}"


def network_name_for_k(k_cpt: float) -> str:
    return f"k_cpt-{k_cpt:g}"


#: The exit-training recipes an experiment can add (docs/training.md): name -> (training
#: options, what they do). Each at its source's usual setting, never tuned here.
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "distill": ({"distill": 0.5}, "self-distillation from the deepest exit"),
    "ge": ({"gradient_equilibrium": True}, "gradient equilibrium"),
    "boost": ({"boost": 1.0}, "boosted exits"),
    "ramp": ({"exit_weight_schedule": "ramp"}, "early exits' weights ramped in"),
    "learned-weights": ({"learned_exit_weights": True}, "learned exit weights"),
}


def _hybrid(name: str, strategy: str, description: str, **options: Any) -> Experiment:
    model = options.pop("model", "chain")
    dynamic = options.pop("dynamic_k_cpt", False)
    return Experiment(f"hybrid-{name}", "hybrid", strategy, model, 1, options, dynamic, description)


def _build_registry() -> dict[str, Experiment]:
    experiments = [
        _hybrid("static", "static", "static nets N = 1..8"),
        _hybrid("actor", "actor", "actor chains"),
        _hybrid("critic", "critic", "pragmatic critic chains"),
        _hybrid("critic-optimistic", "critic", "optimistic critic", critic_target="optimistic"),
        _hybrid(
            "critic-clserr",
            "critic",
            "critic, classification error",
            error_measure="classification",
        ),
        _hybrid("actor-notalr", "actor", "actor without TALR", talr=False),
        _hybrid("critic-notalr", "critic", "critic without TALR", talr=False),
        _hybrid("actor-nokdec", "actor", "actor with k_dec = 0", k_dec=0.0),
        _hybrid("actor-regpolicy", "actor", "actor, regularised policy", regularise_policy=True),
        _hybrid("actor-tree", "actor", "actor, branching tree", model="tree"),
        _hybrid("actor-dynkcpt", "actor", "one dynamic-k_cpt actor", dynamic_k_cpt=True),
        _hybrid("critic-dynkcpt", "critic", "one dynamic-k_cpt critic", dynamic_k_cpt=True),
        _hybrid("multi-exit", "multi-exit", "every exit learns every example (the field's way)"),
    ]
    for dataset in ("cifar2", "cifar5", "cifar10"):
        experiments.append(Experiment(f"{dataset}-static", dataset, "static"))
        experiments.append(Experiment(f"{dataset}-actor", dataset, "actor"))
    experiments.append(
        Experiment("cifar10-multi-exit", "cifar10", "multi-exit", description="multi-exit chain")
    )
    # The field's exit-training recipes (dynroute.train.recipes), each against plain
    # multi-exit training of the same network, and composed with the paper's actor.
    for dataset in ("hybrid", "cifar10"):
        for recipe, (options, what) in RECIPES.items():
            experiments.append(
                Experiment(
                    f"{dataset}-multi-exit-{recipe}",
                    dataset,
                    "multi-exit",
                    options=options,
                    description=f"multi-exit chain, {what}",
                )
            )
    for recipe in ("distill", "boost"):
        options, what = RECIPES[recipe]
        experiments.append(
            Experiment(
                f"hybrid-actor-{recipe}",
                "hybrid",
                "actor",
                options=options,
                description=f"actor chains, {what}",
            )
        )
    # A backbone the paper never used (issue: your own backbone): ResNet-18 split at its
    # stages, exits after each; every other k_cpt of the paper's set (each net costs ~2x a
    # chain's).
    resnet_k = PAPER_K_CPT_SET[1::2]
    experiments += [
        Experiment(
            f"cifar10-resnet18-multi-exit{'-' + recipe if recipe else ''}",
            "cifar10",
            "multi-exit",
            model="resnet18-exits",
            options=RECIPES[recipe][0] if recipe else {},
            description="ResNet-18 with an exit per stage, multi-exit"
            + (f", {RECIPES[recipe][1]}" if recipe else ""),
        )
        for recipe in ("", *RECIPES)
    ]
    experiments += [
        Experiment("cifar10-resnet18-static", "cifar10", "static", model="resnet18-exits"),
        Experiment(
            "cifar10-resnet18-actor",
            "cifar10",
            "actor",
            model="resnet18-exits",
            description="actor ResNet-18 with an exit per stage",
            k_cpt_set=resnet_k,
        ),
    ]
    for width in (2, 3):
        for strategy in ("static", "actor"):
            experiments.append(
                Experiment(f"cifar10-{strategy}-width{width}", "cifar10", strategy, width=width)
            )
    return {e.name: e for e in experiments}


EXPERIMENTS: dict[str, Experiment] = _build_registry()


def get_experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise DynrouteError(
            f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}"
        ) from None


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise DynrouteError(f"unknown scale {name!r}; choose from {', '.join(SCALES)}") from None


def expand(experiment: Experiment | str, scale: Scale | str) -> list[Network]:
    """The networks that draw ``experiment``'s curve at ``scale``, each validated."""
    experiment = get_experiment(experiment) if isinstance(experiment, str) else experiment
    scale = get_scale(scale) if isinstance(scale, str) else scale
    wide = scale.wide if experiment.width > 1 else None
    iterations = scale.iterations // experiment.width if wide else scale.iterations
    options = {**scale.options, **experiment.options}
    if "lr_half_life" in scale.options and wide:  # the same number of halvings
        options["lr_half_life"] = scale.options["lr_half_life"] / experiment.width
    eval_every = scale.eval_every
    if eval_every is not None and wide:
        eval_every = max(1, eval_every // experiment.width)
    base = TrainConfig(
        dataset=experiment.dataset,
        model=experiment.model,
        width=experiment.width,
        strategy=experiment.strategy,
        iterations=iterations,
        batch_size=scale.batch_size,
        eval_every=eval_every,
        eval_splits=("test",),
        **options,
    )

    def thin(values: list) -> list:
        return values[wide.first :: wide.every] if wide else values

    if experiment.is_static:
        from dynroute.nn.models import static_baselines

        variants = [(name, {"model": name}) for name in thin(static_baselines(experiment.model))]
    elif experiment.strategy == "multi-exit":  # one net: its operating points are thresholds
        variants = [("multi-exit", {})]
    elif experiment.dynamic_k_cpt:
        k_set = experiment.k_cpt_values
        k_set = None if k_set == PAPER_K_CPT_SET else k_set
        variants = [("dynamic", {"dynamic_k_cpt": True, "k_cpt_set": k_set})]
    else:
        k_values = thin(list(experiment.k_cpt_values))
        if experiment.name in scale.k_cpt_kept:
            k_values = [k for k in k_values if k in scale.k_cpt_kept[experiment.name]]
        elif not wide and experiment.name not in scale.full:
            k_values = k_values[:: scale.k_cpt_every]
        variants = [(network_name_for_k(k), {"k_cpt": k}) for k in k_values]
    return [
        Network(experiment.name, name, replace(base, **changes).validate(), scale.eval_subset)
        for name, changes in variants
    ]
