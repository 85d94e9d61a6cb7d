"""How the exits learn: the field's multi-exit training recipes, as per-exit losses.

The multi-exit and actor strategies both train every exit of the tree; ``ExitRecipe`` says
how each exit's loss is formed and weighed (docs/training.md, "Exit-training recipes"):

- **weights** per exit (``exit_weights``), fixed, ramped in over the run (``ramp``: the
  early exits' weights grow from 0 over the first half while the deepest exit's stays, as
  Shallow-Deep Networks grow their internal classifiers' weights beside the final
  classifier's fixed one; Kaya et al., ICML 2019), or learned as in uncertainty
  weighting (``learned_exit_weights``: exp(-s) * loss + s / 2 per exit; Kendall et al.,
  CVPR 2018);
- **self-distillation** (``distill``): each exit also matches the softened answer of a
  teacher, the deepest exit or the ensemble of all exits (Phuong & Lampert, ICCV 2019;
  Zhang et al., "Be Your Own Teacher", ICCV 2019): (1 - a) * CE + a * T^2 * KL;
- **gradient equilibrium** (``gradient_equilibrium``): the gradient a node's output
  receives is the mean, not the sum, of what the exits below it send, and the exits'
  losses add up (Li et al., "Improved Techniques for Training Adaptive Deep Networks",
  ICCV 2019);
- **boosting** is a property of the network (``boost`` in ``TrainConfig`` builds a tree
  with boosted exits, ``RoutedTree.boosted_logits``; Yu et al., "Boosted Dynamic Neural
  Networks", AAAI 2023): each exit learns the residual of the exits before it.

The strategies decide how the per-exit losses combine (a weighted mean for multi-exit,
the arrival-weighted expectation for the actor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynroute.core.errors import DynrouteError
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import DenseOutput, RoutedTree
from dynroute.train.choices import TEACHERS, WEIGHT_SCHEDULES

#: Share of the run over which ``ramp`` brings the early exits' weights in.
RAMP_FRACTION = 0.5


@dataclass
class ExitRecipe:
    """The recipe options every exit-training strategy shares (module docstring)."""

    exit_weights: tuple[float, ...] | None = None
    exit_weight_schedule: str = "constant"
    learned_exit_weights: bool = False
    distill: float = 0.0
    distill_temperature: float = 3.0
    distill_teacher: str = "deepest"
    gradient_equilibrium: bool = False

    def __post_init__(self) -> None:
        if self.exit_weight_schedule not in WEIGHT_SCHEDULES:
            raise DynrouteError(
                f"`exit_weight_schedule` must be one of {', '.join(WEIGHT_SCHEDULES)}, "
                f"not {self.exit_weight_schedule!r}"
            )
        if self.distill_teacher not in TEACHERS:
            raise DynrouteError(
                f"`distill_teacher` must be one of {', '.join(TEACHERS)}, "
                f"not {self.distill_teacher!r}"
            )
        self.progress = 0.0  # share of the run done (``set_progress``)
        self.log_variances: torch.nn.Parameter | None = None

    # ------------------------------------------------------------------ set-up
    def check_recipe(self, tree: RoutedTree) -> None:
        """Refuse options that do not fit the tree; create the learned weights."""
        exits = len(tree.leaves)
        if self.exit_weights is not None and len(self.exit_weights) != exits:
            raise DynrouteError(
                f"`exit_weights` has {len(self.exit_weights)} values but the model has "
                f"{exits} exits"
            )
        if self.learned_exit_weights and self.log_variances is None:
            self.log_variances = torch.nn.Parameter(torch.zeros(exits))

    def recipe_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the recipe learns beside the tree's (the learned exit weights)."""
        return [] if self.log_variances is None else [self.log_variances]

    def set_progress(self, progress: float) -> None:
        """Tell the recipe how far the run is (0 to 1), for weight schedules."""
        self.progress = progress

    def gradient_scales(self, tree: RoutedTree) -> dict[int, float] | None:
        """With gradient equilibrium, the factor on the gradient each node sends its parent:
        its share of the parent's exits, so a node's output receives their mean."""
        if not self.gradient_equilibrium:
            return None
        below = tree.leaves_below
        return {
            child: below[child] / below[node]
            for node in range(len(tree.nodes))
            for child in tree.children_of[node]
            if len(tree.children_of[node]) >= 2
        }

    # ------------------------------------------------------------------ losses
    def base_weights(self, tree: RoutedTree, total: float) -> list[float]:
        """Each exit's weight now (leaf order), before any learned weighting: the given
        weights scaled to sum to ``total``; under ``ramp`` the early exits' are scaled down
        by the ramp while the deepest exit keeps its own, as Shallow-Deep Networks keep the
        final classifier's (renormalising instead would put the whole weight, several
        times the usual step, on the deep layers early on)."""
        weights = list(self.exit_weights or (1.0,) * len(tree.leaves))
        given = sum(weights)
        weights = [total * w / given for w in weights]
        if self.exit_weight_schedule == "ramp":
            ramp = min(1.0, self.progress / RAMP_FRACTION)
            deepest = self.teacher_leaf(tree)
            weights = [
                w if leaf == deepest else w * ramp
                for w, leaf in zip(weights, tree.leaves, strict=True)
            ]
        return weights

    def teacher_leaf(self, tree: RoutedTree) -> int:
        """The deepest exit: the one whose path costs the most."""
        macs = tree_costs(tree).oracle_path_macs
        return max(tree.leaves, key=lambda leaf: (macs[leaf], leaf))

    def exit_losses(
        self, tree: RoutedTree, dense: DenseOutput, labels: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Per exit, the per-example loss it learns from (cross-entropy, or mixed with the
        teacher's softened answer), unweighted."""
        logits = {leaf: dense.logits[leaf].float() for leaf in tree.leaves}
        losses = {leaf: F.cross_entropy(z, labels, reduction="none") for leaf, z in logits.items()}
        if not self.distill:
            return losses
        t = self.distill_temperature
        with torch.no_grad():
            if self.distill_teacher == "deepest":
                teacher_leaf = self.teacher_leaf(tree)
                target = torch.softmax(logits[teacher_leaf] / t, dim=1)
            else:
                teacher_leaf = -1
                target = torch.stack([torch.softmax(z / t, 1) for z in logits.values()]).mean(0)
        for leaf, z in logits.items():
            if leaf == teacher_leaf:
                continue
            kl = F.kl_div(torch.log_softmax(z / t, dim=1), target, reduction="none").sum(dim=1)
            losses[leaf] = (1.0 - self.distill) * losses[leaf] + self.distill * t * t * kl
        return losses

    def weighted_exit_losses(
        self, tree: RoutedTree, dense: DenseOutput, labels: torch.Tensor, total: float
    ) -> dict[int, torch.Tensor]:
        """Per exit, its loss times its weight, the weights summing to ``total`` (learned
        weights: exp(-s) * weighted loss + weight * s / 2)."""
        losses = self.exit_losses(tree, dense, labels)
        weights = self.base_weights(tree, total)
        out = {}
        for k, leaf in enumerate(tree.leaves):
            loss = weights[k] * losses[leaf]
            if self.log_variances is not None:
                s = self.log_variances[k].to(loss)
                loss = torch.exp(-s) * loss + weights[k] * s / 2
            out[leaf] = loss
        return out
