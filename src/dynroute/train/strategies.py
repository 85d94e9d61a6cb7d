"""Training strategies: how a node tree's cost terms become one loss.

Every strategy sees the same dense pass (every node on every example), the
per-node MACs and the per-node weight norms; they differ only in how they
combine them (docs/method.md §4):

- ``static``: cross-entropy at the single exit plus L2.
- ``actor``: the exact expectation of c_inf = c_err + k_cpt * MACs under the
  training policy softmax(s / tau) (+ exploration floor), with the
  decisiveness term k_dec * ||s||^2; routers learn through p_train.
- ``critic``: routers regress the negative cost of each sink's subtree
  (``pragmatic``: under the current hard policy downstream; ``optimistic``:
  the best downstream choice), with cross-entropy or 0/1 error inside the
  targets; p_train is a constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dynroute.core.errors import DynrouteError
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import DenseOutput, RoutedTree, k_cpt_per_example
from dynroute.train.choices import CRITIC_TARGETS, ERROR_MEASURES, STRATEGY_NAMES
from dynroute.train.recipes import ExitRecipe


@dataclass
class LossOutput:
    """The loss to minimise, the arrival probabilities it used, and log values."""

    loss: torch.Tensor
    arrival: list[torch.Tensor]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class _SquaredNorms(torch.autograd.Function):
    """Each node's sum of squared weights, as one autograd node.

    Autograd through ``w.pow(2).sum()`` per weight tensor records three small ops forward
    and runs three backward for each of the chain's 49 weights: 6 ms of a 240 ms eager CPU
    step, against 2 ms for this.
    """

    generate_vmap_rule = True  # torch.func ensembles (benchmarks/bench_ensemble.py)

    @staticmethod
    def forward(spans: tuple[tuple[int, int], ...], owner: tuple[int, ...], *weights):
        if not weights:
            return torch.zeros(len(spans))
        # Not torch._foreach_norm: vmap (bench_ensemble.py) has no rule for it.
        squares = torch.stack([torch.linalg.vector_norm(w) for w in weights]).pow(2)
        return torch.stack([squares[start:stop].sum() for start, stop in spans])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.owner = inputs[1]
        ctx.save_for_backward(*inputs[2:])

    @staticmethod
    def backward(ctx, grad):
        per_node = (2 * grad).unbind()
        # Not torch._foreach_mul: vmap has no rule for it either.
        weights = zip(ctx.saved_tensors, ctx.owner, strict=True)
        return (None, None, *(w * per_node[node] for w, node in weights))


def node_weight_norms(tree: RoutedTree) -> torch.Tensor:
    """Sum of squared conv/linear weights of each node (transform and router), shape (nodes,)."""
    weights: list[torch.Tensor] = []
    spans: list[tuple[int, int]] = []
    owner: list[int] = []
    for index, node in enumerate(tree.nodes):
        own = [p for p in node.own_parameters() if p.dim() > 1]
        spans.append((len(weights), len(weights) + len(own)))
        owner += [index] * len(own)
        weights += own
    return _SquaredNorms.apply(tuple(spans), tuple(owner), *weights)


@dataclass
class Strategy:
    """Shared hyperparameters; subclasses implement ``loss``."""

    k_l2: float = 1e-4
    epsilon: float = 1e-6
    name = "base"
    #: Whether the routers learn (a strategy that ignores them leaves them as built).
    trains_routers = True

    def check(self, tree: RoutedTree) -> None:
        """Refuse a tree this strategy cannot train."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the loss learns beside the tree's (trained and checkpointed with it)."""
        return []

    def gradient_scales(self, tree: RoutedTree) -> dict[int, float] | None:
        """Factors on the gradient each node sends its parent (``forward_dense``), if any."""
        return None

    def set_progress(self, progress: float) -> None:
        """How far the run is (0 to 1), for losses that change over a run."""

    def loss(
        self,
        tree: RoutedTree,
        dense: DenseOutput,
        labels: torch.Tensor,
        k_cpt: torch.Tensor | float,
        tau: float,
    ) -> LossOutput:
        raise NotImplementedError

    def _l2(self, tree: RoutedTree, arrival: list[torch.Tensor]) -> torch.Tensor:
        """Path-weighted L2: each node's weights count as often as it is reached."""
        norms = node_weight_norms(tree)
        return self.k_l2 * (torch.stack(arrival, dim=1) * norms.to(arrival[0])).sum(dim=1)


def expected_error(
    tree: RoutedTree, dense: DenseOutput, labels: torch.Tensor, arrival: list[torch.Tensor]
) -> torch.Tensor:
    """Per-example cross-entropy expected over the exits: sum over leaves of p * CE."""
    return sum(
        arrival[leaf] * F.cross_entropy(dense.logits[leaf].float(), labels, reduction="none")
        for leaf in tree.leaves
    )


def _like(dense: DenseOutput) -> torch.Tensor:
    """A tensor with the dtype and device the loss terms should have."""
    return next(iter(dense.logits.values()))


@dataclass
class StaticStrategy(Strategy):
    """A statically-routed net: cross-entropy at its one exit plus L2."""

    name = "static"

    def check(self, tree):
        if tree.junctions:
            raise DynrouteError("the static strategy trains trees without junctions (static-N)")

    def loss(self, tree, dense, labels, k_cpt, tau):
        like = _like(dense)
        arrival = tree.arrival_probabilities({}, labels.shape[0], like)
        error = expected_error(tree, dense, labels, arrival)
        l2 = self._l2(tree, arrival)
        terms = {"error": error.mean(), "l2": l2.mean()}
        return LossOutput((error + l2).mean(), arrival, terms)


@dataclass
class ExitTraining(ExitRecipe, Strategy):
    """A strategy that trains every exit, with the exit-training recipe's options."""

    def check(self, tree):
        self.check_recipe(tree)

    def extra_parameters(self):
        return self.recipe_parameters()


@dataclass
class ActorStrategy(ExitTraining):
    """Minimise E[c_inf] exactly, by weighting every node's terms by p_train; each exit's
    cross-entropy is its recipe's loss (``ExitRecipe``), its weights averaging 1."""

    k_dec: float = 0.01
    regularise_policy: bool = False
    name = "actor"

    def loss(self, tree, dense, labels, k_cpt, tau):
        like = _like(dense)
        batch = labels.shape[0]
        branches = tree.branch_probabilities(dense.scores, tau, self.epsilon)
        arrival = tree.arrival_probabilities(branches, batch, like)
        fixed = [p.detach() for p in arrival]
        losses = self.weighted_exit_losses(tree, dense, labels, total=len(tree.leaves))
        error = sum(arrival[leaf] * losses[leaf] for leaf in tree.leaves)
        k = k_cpt_per_example(k_cpt, batch, like)
        compute = k * tree_costs(tree).expected_macs(arrival)
        regularised = arrival if self.regularise_policy else fixed
        l2 = self._l2(tree, regularised)
        decisiveness = sum(
            (regularised[j] * dense.scores[j].float().pow(2).sum(dim=1) for j in tree.junctions),
            torch.zeros_like(k),
        )
        total = error + compute + l2 + self.k_dec * decisiveness
        terms = {"error": error.mean(), "compute": compute.mean(), "l2": l2.mean()}
        return LossOutput(total.mean(), fixed, terms)


def subtree_costs(
    tree: RoutedTree,
    dense: DenseOutput,
    labels: torch.Tensor,
    k_cpt: torch.Tensor,
    critic_target: str,
    error_measure: str,
) -> list[torch.Tensor]:
    """Per-example cost of each node's subtree, bottom-up (critic targets).

    cost(node) = k_cpt * MACs(node) + (error if leaf, else the cost of the sink
    chosen downstream: argmax of the scores for ``pragmatic``, the cheapest
    sink for ``optimistic``).
    """
    macs = tree_costs(tree).node_macs
    costs: list[torch.Tensor | None] = [None] * len(tree.nodes)
    for i in reversed(range(len(tree.nodes))):
        own = k_cpt * float(macs[i])
        kids = tree.children_of[i]
        if not kids:
            logits = dense.logits[i].float()
            if error_measure == "cross-entropy":
                err = F.cross_entropy(logits, labels, reduction="none")
            else:
                err = (logits.argmax(dim=1) != labels).to(own.dtype)
            costs[i] = own + err
        elif len(kids) == 1:
            costs[i] = own + costs[kids[0]]
        else:
            below = torch.stack([costs[c] for c in kids], dim=1)
            if critic_target == "pragmatic":
                choice = dense.scores[i].argmax(dim=1, keepdim=True)
                costs[i] = own + below.gather(1, choice).squeeze(1)
            else:
                costs[i] = own + below.min(dim=1).values
    return costs  # type: ignore[return-value]


@dataclass
class CriticStrategy(Strategy):
    """Routers regress -cost of each sink; classifiers minimise p-weighted error."""

    critic_target: str = "pragmatic"
    error_measure: str = "cross-entropy"
    k_cre: float = 0.001
    name = "critic"

    def __post_init__(self) -> None:
        if self.critic_target not in CRITIC_TARGETS:
            raise DynrouteError(
                f"`critic_target` must be one of {', '.join(CRITIC_TARGETS)}, "
                f"not {self.critic_target!r}"
            )
        if self.error_measure not in ERROR_MEASURES:
            raise DynrouteError(
                f"`error_measure` must be one of {', '.join(ERROR_MEASURES)}, "
                f"not {self.error_measure!r}"
            )

    def check(self, tree):
        if not tree.junctions:
            raise DynrouteError("the critic strategy needs a tree with junctions")

    def loss(self, tree, dense, labels, k_cpt, tau):
        like = _like(dense)
        batch = labels.shape[0]
        detached = {j: s.detach() for j, s in dense.scores.items()}
        branches = tree.branch_probabilities(detached, tau, self.epsilon)
        arrival = [p.detach() for p in tree.arrival_probabilities(branches, batch, like)]
        k = k_cpt_per_example(k_cpt, batch, like)
        with torch.no_grad():
            costs = subtree_costs(tree, dense, labels, k, self.critic_target, self.error_measure)
        error = expected_error(tree, dense, labels, arrival)
        regression = sum(
            arrival[j]
            * (dense.scores[j].float() + torch.stack([costs[c] for c in tree.children_of[j]], 1))
            .pow(2)
            .sum(dim=1)
            for j in tree.junctions
        )
        l2 = self._l2(tree, arrival)
        total = error + self.k_cre * regression + l2
        terms = {"error": error.mean(), "regression": regression.mean(), "l2": l2.mean()}
        return LossOutput(total.mean(), arrival, terms)


@dataclass
class MultiExitStrategy(ExitTraining):
    """The field's standard training (BranchyNet, MSDNet, Shallow-Deep Networks): every exit
    learns every example, the weighted mean of the exits' losses (equal weights and plain
    cross-entropy unless a recipe says otherwise, ``ExitRecipe``; with gradient equilibrium
    their sum); routers are not trained. Such a net exits by a confidence or entropy
    threshold at inference (``dynroute.nn.routing``)."""

    name = "multi-exit"
    trains_routers = False

    def check(self, tree):
        if len(tree.leaves) < 2:
            raise DynrouteError("the multi-exit strategy needs a tree with two or more exits")
        super().check(tree)

    def loss(self, tree, dense, labels, k_cpt, tau):
        like = _like(dense)
        batch = labels.shape[0]
        arrival = tree.arrival_probabilities({}, batch, like)  # every node, every example
        total = float(len(tree.leaves)) if self.gradient_equilibrium else 1.0
        error = sum(self.weighted_exit_losses(tree, dense, labels, total).values())
        l2 = self._l2(tree, arrival)
        terms = {"error": error.mean(), "l2": l2.mean()}
        return LossOutput((error + l2).mean(), arrival, terms)


STRATEGIES = {
    "static": StaticStrategy,
    "actor": ActorStrategy,
    "critic": CriticStrategy,
    "multi-exit": MultiExitStrategy,
}
assert tuple(STRATEGIES) == STRATEGY_NAMES  # the names the config offers are the ones here


def make_strategy(name: str, **options) -> Strategy:
    """Build a strategy by name; unknown names and options are user errors."""
    if name not in STRATEGIES:
        raise DynrouteError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    cls = STRATEGIES[name]
    fields = cls.__dataclass_fields__
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise DynrouteError(f"strategy {name!r} does not take {', '.join(unknown)}")
    return cls(**options)


def trains_routers(name: str) -> bool:
    """Whether the strategy learns the routers (actor, critic); static nets have none, and
    a multi-exit net's are never trained, so only exit rules can route it."""
    return name in ("actor", "critic")
