"""Policies whose parameters are fitted on held-out data: ``ensemble`` and ``budgeted``.

Both are fitted on a split the network did not train on (a run's validation split) and
then applied unchanged to new data (``docs/policies.md``):

- ``fit_ensemble``: for every exit, the weights of a geometric mean of its own softmax and
  those of the exits an example passed before it, plus a bias per class, fitted by
  cross-entropy (L-BFGS, a little L2). Deep exits then answer with what the shallow ones
  already computed (Zero Time Waste, Wołczyk et al. 2021), at a few multiply-adds per class;
  the exit rule is a confidence threshold on the combined answer. An exit keeps its own
  answer unless the combination, cross-fitted on two halves of the split, answers clearly
  more held-out examples right (by more than two standard deviations of the paired
  difference), so that a net whose exits gain nothing from each other loses nothing.
- ``fit_budgeted``: MSDNet's budgeted scheme (Huang et al. 2018): the share of examples
  leaving at the exit of depth d follows q^d (normalised), q chosen so that the mean MACs
  meet a budget, and each depth's confidence threshold is the quantile that lets that
  share out.

``threshold_family`` lists a single-threshold policy's operating points on a table (one
per quantile of its certainties), which calibration and the budget table choose from.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dynroute.errors import DynrouteError
from dynroute.infer.operating_points import DenseOutputs, ExitTable
from dynroute.nn.policy import Policy
from dynroute.nn.routing import history_exits
from dynroute.nn.tree import RoutedTree

#: L2 penalty of the ensemble's weights and biases (per example of the fitting split).
ENSEMBLE_L2 = 1e-3
#: Thresholds tried per single-threshold policy: its certainties at this many quantiles.
THRESHOLD_QUANTILES = 2001
#: The budgeted scheme's q is searched over [1/Q_RANGE, Q_RANGE] (log scale).
Q_RANGE = 1e3


def fit_ensemble(tree: RoutedTree, outputs: DenseOutputs, l2: float = ENSEMBLE_L2) -> Policy:
    """The ensemble policy's weights and biases fitted on a split's dense outputs (its
    threshold, 0.5 here, is then chosen for a budget: ``threshold_family``)."""
    if len(outputs.labels) == 0:
        raise DynrouteError("fitting the ensemble policy needs held-out examples; got none")
    log_probs = torch.log_softmax(outputs.logits.float(), dim=2)
    labels = outputs.labels.long()
    position = {leaf: k for k, leaf in enumerate(tree.leaves)}
    folds = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)) % 2 == 0
    weights, biases = [], []
    for leaf, passed in history_exits(tree).items():
        inputs = log_probs[:, [position[c] for c in passed] + [position[leaf]]]
        if _combining_helps(inputs, labels, folds, l2):
            w, b = _fit_combination(inputs, labels, l2)
        else:  # the exit answers alone
            w, b = [0.0] * len(passed) + [1.0], [0.0] * inputs.shape[2]
        weights.append(w)
        biases.append(b)
    return Policy("ensemble", 0.5, weights=weights, biases=biases)


def _combining_helps(
    inputs: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor, l2: float
) -> bool:
    """Whether the combination, fitted on one half of the split and scored on the other
    (both ways), answers clearly more held-out examples right than the exit alone: only it
    gets right more than two standard deviations (sqrt of the examples only one of the two
    gets right) above the reverse. Where it does not (an exit the earlier ones cannot
    improve, too few examples), the exit keeps its own answer."""
    only_combined = only_alone = 0
    for fit in (folds, ~folds):
        if fit.sum() == 0 or (~fit).sum() == 0:
            return True
        w, b = _fit_combination(inputs[fit], labels[fit], l2)
        held, held_labels = inputs[~fit], labels[~fit]
        mixed = (held * torch.tensor(w)[None, :, None]).sum(dim=1) + torch.tensor(b)
        right = mixed.argmax(dim=1) == held_labels
        right_alone = held[:, -1].argmax(dim=1) == held_labels
        only_combined += int((right & ~right_alone).sum())
        only_alone += int((~right & right_alone).sum())
    return only_combined - only_alone > 2 * math.sqrt(only_combined + only_alone)


def _fit_combination(
    inputs: torch.Tensor, labels: torch.Tensor, l2: float
) -> tuple[list[float], list[float]]:
    """Weights over ``inputs`` (N, m, classes) log-softmaxes and a bias per class that
    minimise the combination's cross-entropy, starting from the last input alone."""
    w = torch.zeros(inputs.shape[1])
    w[-1] = 1.0
    w.requires_grad_(True)
    b = torch.zeros(inputs.shape[2], requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        mixed = (inputs * w[None, :, None]).sum(dim=1) + b
        value = torch.nn.functional.cross_entropy(mixed, labels)
        value = value + l2 * (w.square().sum() + b.square().sum())
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return w.detach().tolist(), b.detach().tolist()


def threshold_family(table: ExitTable, policy: Policy) -> list[tuple[Policy, torch.Tensor]]:
    """A single-threshold policy (confidence, entropy, ensemble on its own table) at every
    threshold worth trying on ``table``: (policy, exit positions) pairs, cheapest last."""
    kind = policy.name
    steps = table.steps[kind]
    values = table.measure[kind].gather(1, steps.clamp_min(0))[steps >= 0].numpy()
    if values.size == 0:
        values = np.array([0.5])
    quantiles = np.quantile(values, np.linspace(0, 1, THRESHOLD_QUANTILES))
    thresholds = np.unique(np.clip(quantiles, 0, 1)).tolist()
    family = []
    for threshold in (0.0, *thresholds, 1.0):
        chosen = Policy(**{**policy.to_dict(), "threshold": float(threshold)})
        family.append((chosen, table.exits(chosen)))
    return family


def _depths(table: ExitTable, kind: str) -> list[int]:
    """Each exit's depth on the paths (its step column); -1 for exits only ever terminal."""
    depth = [-1] * len(table.leaves)
    for d in range(table.steps[kind].shape[1]):
        for position in table.steps[kind][:, d].unique().tolist():
            if position >= 0 and depth[position] < 0:
                depth[position] = d
    return depth


def budgeted_thresholds(table: ExitTable, q: float, like: Policy | None = None) -> Policy:
    """The budgeted policy whose exit shares follow q^depth on ``table`` (MSDNet); with an
    ensemble policy ``like``, that policy with these thresholds on its combined answers
    (``table`` being its table)."""
    kind = "ensemble" if like is not None else "confidence"
    steps = table.steps[kind]
    n, depth_count = steps.shape
    measure = table.measure[kind].gather(1, steps.clamp_min(0))
    # Depths with an exit to leave at, and the last exit (where everyone else ends).
    levels = [d for d in range(depth_count) if bool((steps[:, d] >= 0).any())]
    shares = q ** np.arange(len(levels) + 1, dtype=np.float64)
    shares /= shares.sum()
    share_of = dict(zip(levels, shares, strict=False))
    remaining = torch.ones(n, dtype=torch.bool)
    by_depth = []
    for d in range(depth_count):
        here = remaining & (steps[:, d] >= 0)
        values = measure[here, d]
        take = int(round(share_of.get(d, 0.0) * n))
        if take <= 0 or len(values) == 0:
            threshold = 2.0  # nobody leaves here
        elif take >= len(values):
            threshold = -1.0  # everybody who gets here leaves
        else:
            threshold = float(values.sort(descending=True).values[take - 1])
        by_depth.append(threshold)
        remaining &= ~(here & (measure[:, d] >= threshold))
    thresholds = [by_depth[d] if d >= 0 else 2.0 for d in _depths(table, kind)]
    if like is not None:
        return Policy(**{**like.to_dict(), "threshold": None, "thresholds": thresholds})
    return Policy("budgeted", thresholds=thresholds)


def budgeted_family(
    table: ExitTable, count: int = 1001, like: Policy | None = None
) -> list[tuple[Policy, torch.Tensor]]:
    """The budgeted policy for q on a log grid (on an ensemble's table with ``like``):
    (policy, exit positions) pairs."""
    family = []
    for q in np.logspace(-math.log10(Q_RANGE), math.log10(Q_RANGE), count):
        policy = budgeted_thresholds(table, float(q), like)
        family.append((policy, table.exits(policy)))
    return family


def fit_budgeted(table: ExitTable, budget: float, cost_model: str = "threshold") -> Policy:
    """The budgeted policy whose mean MACs on ``table`` come closest to ``budget`` from below
    (bisection on log q)."""
    macs = table.leaf_macs[cost_model].double()

    def spend(q: float) -> float:
        return float(macs[table.exits(budgeted_thresholds(table, q))].mean())

    low, high = math.log(1 / Q_RANGE), math.log(Q_RANGE)
    if spend(math.exp(low)) > budget:
        raise DynrouteError(
            f"the budgeted policy cannot stay within {budget / 1e6:.3f} M MACs on these exits"
        )
    for _ in range(40):
        middle = (low + high) / 2
        if spend(math.exp(middle)) <= budget:
            low = middle
        else:
            high = middle
    return budgeted_thresholds(table, math.exp(low))
