"""Answers fitted on held-out data: recalibrated and combined.

Everything here is fitted on a split the network did not train on (a run's validation
split) and then applied unchanged to new data (``docs/policies.md``):

- ``fit_answers``: per exit, ``calibrated`` answers scale the exit's log-softmax (one over
  a temperature) and add a bias per class; ``combined`` answers also weigh the
  log-softmaxes of the exits an example passed before it (a running ensemble, Zero Time
  Waste, Wołczyk et al. 2021). Both minimise cross-entropy (L-BFGS, a little L2). An exit
  keeps its calibrated answer unless combining, cross-fitted on two halves of the split,
  answers clearly more held-out examples right (by more than two standard deviations of
  the paired difference), so a net whose exits gain nothing from each other loses nothing.

Each exit rule fits its own parameters (thresholds, the scheduler's models) in its file
under ``dynroute.core.rules``.
"""

from __future__ import annotations

import math

import torch

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy
from dynroute.core.probabilities import log_softmax_all
from dynroute.policies.exit_table import DenseOutputs, TreeFacts

#: L2 penalty of the answers' weights and biases (per example of the fitting split).
ANSWERS_L2 = 1e-3


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
