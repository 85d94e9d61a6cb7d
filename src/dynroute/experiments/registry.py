"""Named experiments: every curve of the paper, expanded into the networks that draw it.

An experiment fixes a dataset, model family, strategy and the options that make it a
variant (docs/method.md §7); a scale preset fixes how long each network trains. Expanding
the pair yields ``Network`` objects whose ``TrainConfig`` is exactly what
``dynroute train`` would run with the same options.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.nn.registry import static_baselines
from dynroute.train.config import PAPER_K_CPT_SET, TrainConfig


@dataclass(frozen=True)
class Scale:
    """How long and how large every network of a sweep trains.

    ``eval_subset`` evaluates on that many seeded test images instead of the whole
    split; only ``smoke`` uses it, so CI stays in seconds. Training is unaffected.
    """

    name: str
    iterations: int
    batch_size: int = 128
    eval_every: int | None = None
    eval_subset: int | None = None
    description: str = ""


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

    @property
    def is_static(self) -> bool:
        return self.strategy == "static"

    @property
    def k_cpt_values(self) -> tuple[float, ...]:
        """The paper's k_cpt set; wider nets cost width² more per MAC-equivalent, so ÷ width²."""
        return tuple(k / self.width**2 for k in PAPER_K_CPT_SET)


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
    ]
    for dataset in ("cifar2", "cifar5", "cifar10"):
        experiments.append(Experiment(f"{dataset}-static", dataset, "static"))
        experiments.append(Experiment(f"{dataset}-actor", dataset, "actor"))
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
    base = TrainConfig(
        dataset=experiment.dataset,
        model=experiment.model,
        width=experiment.width,
        strategy=experiment.strategy,
        iterations=scale.iterations,
        batch_size=scale.batch_size,
        eval_every=scale.eval_every,
        eval_splits=("test",),
        **experiment.options,
    )
    if experiment.is_static:
        variants = [(name, {"model": name}) for name in static_baselines(experiment.model)]
    elif experiment.dynamic_k_cpt:
        k_set = experiment.k_cpt_values
        k_set = None if k_set == PAPER_K_CPT_SET else k_set
        variants = [("dynamic", {"dynamic_k_cpt": True, "k_cpt_set": k_set})]
    else:
        variants = [(network_name_for_k(k), {"k_cpt": k}) for k in experiment.k_cpt_values]
    return [
        Network(experiment.name, name, replace(base, **changes).validate(), scale.eval_subset)
        for name, changes in variants
    ]
