"""Parameters fitted on held-out data: recalibrated and combined answers, thresholds.

Everything here is fitted on a split the network did not train on (a run's validation
split) and then applied unchanged to new data (``docs/policies.md``):

- ``fit_answers``: per exit, ``calibrated`` answers scale the exit's log-softmax (one over
  a temperature) and add a bias per class; ``combined`` answers also weigh the
  log-softmaxes of the exits an example passed before it (a running ensemble, Zero Time
  Waste, Wołczyk et al. 2021). Both minimise cross-entropy (L-BFGS, a little L2). An exit
  keeps its calibrated answer unless combining, cross-fitted on two halves of the split,
  answers clearly more held-out examples right (by more than two standard deviations of
  the paired difference), so a net whose exits gain nothing from each other loses nothing.
- ``threshold_family``: a single-threshold rule at the quantiles of its measure;
- ``budgeted_family``: MSDNet's budgeted scheme (Huang et al. 2018):
  the share of examples leaving at the exit of depth d follows q^d (normalised), and each
  depth's confidence threshold is the quantile that lets that share out.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from dynroute.errors import DynrouteError
from dynroute.policies.analysis import thresholds_at_quantiles, with_threshold
from dynroute.policies.exit_table import DenseOutputs, ExitTable, TreeFacts, log_softmax_all
from dynroute.policy import Policy

#: L2 penalty of the answers' weights and biases (per example of the fitting split).
ANSWERS_L2 = 1e-3
#: Thresholds tried per single-threshold rule: its measures at this many quantiles.
THRESHOLD_QUANTILES = 2001
#: The budgeted scheme's q is searched over [1/Q_RANGE, Q_RANGE] (log scale).
Q_RANGE = 1e3
#: Values of q tried for the budgeted scheme's family.
Q_COUNT = 401


def fit_answers(
    facts: TreeFacts, outputs: DenseOutputs, kind: str, l2: float = ANSWERS_L2
) -> Policy:
    """A confidence rule (threshold 0.5, chosen later) on ``kind`` answers whose weights and
    biases are fitted on ``outputs`` (``calibrated`` or ``combined``)."""
    if kind not in ("calibrated", "combined"):
        raise DynrouteError(f"answers to fit are calibrated or combined, not {kind!r}")
    if len(outputs) == 0:
        raise DynrouteError(f"fitting {kind} answers needs held-out examples; got none")
    shape = facts.shape
    log_probs = torch.from_numpy(log_softmax_all(outputs.logits))
    labels = torch.from_numpy(outputs.labels).long()
    folds = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)) % 2 == 0
    weights, biases = [], []
    for position, leaf in enumerate(shape.leaves):
        passed = [shape.leaf_position[c] for c in shape.history[leaf]]
        own = log_probs[:, position : position + 1]
        w, b = _fit_combination(own, labels, l2)
        w = [0.0] * len(passed) + w
        if kind == "combined" and passed:
            inputs = log_probs[:, [*passed, position]]
            if _combining_helps(inputs, own, labels, folds, l2):
                w, b = _fit_combination(inputs, labels, l2)
        weights.append(w)
        biases.append(b)
    return Policy("confidence", 0.5, answers=kind, weights=weights, biases=biases)


def _combining_helps(
    inputs: torch.Tensor, own: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor, l2: float
) -> bool:
    """Whether the combination, fitted on one half of the split and scored on the other
    (both ways), answers clearly more held-out examples right than the exit's calibrated
    answer alone: only it gets right more than two standard deviations (sqrt of the
    examples only one of the two gets right) above the reverse."""
    only_combined = only_alone = 0
    for fit in (folds, ~folds):
        if fit.sum() == 0 or (~fit).sum() == 0:
            return False
        right = {}
        for name, x in (("combined", inputs), ("alone", own)):
            w, b = _fit_combination(x[fit], labels[fit], l2)
            held = x[~fit]
            mixed = (held * torch.tensor(w)[None, :, None]).sum(dim=1) + torch.tensor(b)
            right[name] = mixed.argmax(dim=1) == labels[~fit]
        only_combined += int((right["combined"] & ~right["alone"]).sum())
        only_alone += int((~right["combined"] & right["alone"]).sum())
    return only_combined - only_alone > 2 * math.sqrt(only_combined + only_alone)


def _fit_combination(
    inputs: torch.Tensor, labels: torch.Tensor, l2: float
) -> tuple[list[float], list[float]]:
    """Weights over ``inputs`` (N, m, classes) log-softmaxes and a bias per class that
    minimise the combination's cross-entropy, starting from the last input alone."""
    w = torch.zeros(inputs.shape[1], dtype=torch.float32)
    w[-1] = 1.0
    w.requires_grad_(True)
    b = torch.zeros(inputs.shape[2], requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    inputs = inputs.float()

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        mixed = (inputs * w[None, :, None]).sum(dim=1) + b
        value = torch.nn.functional.cross_entropy(mixed, labels)
        value = value + l2 * ((w[:-1]).square().sum() + (w[-1] - 1).square() + b.square().sum())
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return w.detach().tolist(), b.detach().tolist()


# --------------------------------------------------------------------------- families


def threshold_family(
    table: ExitTable, rule: str | Policy, count: int = THRESHOLD_QUANTILES
) -> list[tuple[Policy, np.ndarray]]:
    """A single-threshold rule on the table's answers at every threshold worth trying:
    (policy, exit positions) pairs. ``rule``: its name, or a policy carrying its fitted
    parameters (a scheduler's models)."""
    template = with_threshold(table.answers, rule, 0.5) if isinstance(rule, str) else rule
    thresholds = thresholds_at_quantiles(table, template, count)
    policies = [replace(template, threshold=t) for t in thresholds]
    at_once = table.exits_for_thresholds(template, np.asarray(thresholds))
    if at_once is None:
        return [(policy, table.exits(policy)) for policy in policies]
    return [(policy, at_once[:, k]) for k, policy in enumerate(policies)]


def _depths(table: ExitTable) -> list[int]:
    """Each exit's depth on the paths (its step column); -1 for exits only ever terminal."""
    depth = [-1] * table.answer.shape[1]
    for d in range(table.candidates.shape[1]):
        for position in np.unique(table.candidates[:, d]).tolist():
            if position >= 0 and depth[position] < 0:
                depth[position] = d
    return depth


def budgeted_thresholds(table: ExitTable, q: float) -> Policy:
    """The budgeted policy on the table's answers whose exit shares follow q^depth
    (MSDNet)."""
    template = replace(
        table.answers,
        name="budgeted",
        threshold=None,
        thresholds=(0.5,) * len(table.facts.shape.leaves),
    )
    measure = table.measures(template)
    candidates = table.candidates
    n, depth_count, _ = candidates.shape
    first = np.where(candidates[:, :, 0] >= 0, candidates[:, :, 0], 0)
    values_at = np.take_along_axis(measure, first, 1)  # the first exit offered at each depth
    offered = candidates[:, :, 0] >= 0
    levels = [d for d in range(depth_count) if offered[:, d].any()]
    shares = q ** np.arange(len(levels) + 1, dtype=np.float64)
    shares /= shares.sum()
    share_of = dict(zip(levels, shares, strict=False))
    remaining = np.ones(n, dtype=bool)
    by_depth = []
    for d in range(depth_count):
        here = remaining & offered[:, d]
        values = values_at[here, d]
        take = int(round(share_of.get(d, 0.0) * n))
        if take <= 0 or len(values) == 0:
            threshold = 2.0  # nobody leaves here
        elif take >= len(values):
            threshold = -1.0  # everybody who gets here leaves
        else:
            threshold = float(np.sort(values)[::-1][take - 1])
        by_depth.append(threshold)
        remaining &= ~(here & (values_at[:, d] >= np.float32(threshold)))
    thresholds = [by_depth[d] if d >= 0 else 2.0 for d in _depths(table)]
    return replace(template, thresholds=tuple(thresholds))


def budgeted_family(table: ExitTable, count: int = Q_COUNT) -> list[tuple[Policy, np.ndarray]]:
    """The budgeted policy for q on a log grid: (policy, exit positions) pairs."""
    family = []
    for q in np.logspace(-math.log10(Q_RANGE), math.log10(Q_RANGE), count):
        policy = budgeted_thresholds(table, float(q))
        family.append((policy, table.exits(policy)))
    return family
