"""The learned scheduler: a per-example exit decision fitted after the exits are frozen.

At each exit the scheduler reads only what the example has already computed (the exit's
answer and the raw answers of the exits it passed: ``dynroute.decisions.
SCHEDULER_FEATURES``) and estimates, with one logistic model per exit it could still
reach, how likely each of those exits is to be right. Going on to a deeper exit j buys
``P(j right) - P(here right)`` accuracy for ``MACs(j) - MACs(here)``; the example stops
unless some deeper exit promises more accuracy per million MACs than a price, the
policy's threshold (negated). One price trades accuracy against MACs along the whole
network, so a budget picks it like any threshold.

Unlike a confidence threshold, the scheduler can stop an example early because no deeper
exit is likely to get it right either (a hopeless example), and can send on a confident
one whose deeper exits are reliably better.

``fit_scheduler`` fits the models on held-out tables (the run's validation split, and
optionally more: ``sources``); ``cross_fitted_measures`` gives each validation example the
measure of a model fitted without it, so that choosing the price on validation does not
reward the models' fit to the very examples they were fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from dynroute.decisions import SCHEDULER_FEATURES, scheduler_features
from dynroute.errors import DynrouteError
from dynroute.policies.exit_table import ExitTable, log_softmax_all
from dynroute.policy import Policy

#: L2 penalty of the logistic models' coefficients (on standardised features).
SCHEDULER_L2 = 1e-3
#: Folds of the validation split for the cross-fitted measures.
FOLDS = 2


def _features(table: ExitTable, position: int) -> np.ndarray:
    shape = table.facts.shape
    leaf = shape.leaves[position]
    passed = [shape.leaf_position[c] for c in shape.history[leaf]]
    history = log_softmax_all(table.outputs.logits[:, passed]) if passed else None
    return scheduler_features(history, table.answer[:, position])


def _targets(table: ExitTable, position: int) -> list[int]:
    """The exit itself, then the exits an example can still reach from it (leaf order)."""
    shape = table.facts.shape
    deeper = shape.deeper[shape.leaves[position]]
    return [position, *(shape.leaf_position[leaf] for leaf in deeper)]


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent logistic regressions of each column of ``y`` (N, T) on ``x`` (N, F):
    coefficients (T, F) and intercepts (T,), by L-BFGS."""
    xt = torch.from_numpy(x).double()
    yt = torch.from_numpy(y.astype(np.float64))
    mean = yt.mean(dim=0).clamp(1e-4, 1 - 1e-4)
    w = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.log(mean / (1 - mean)).detach().clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = xt @ w.T + b
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
        value = value + l2 * w.square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return w.detach().numpy(), b.detach().numpy()


def fit_scheduler(
    tables: Sequence[ExitTable],
    l2: float = SCHEDULER_L2,
    recalibrate_on: ExitTable | None = None,
) -> Policy:
    """The scheduler on ``tables``' answers (all of one kind, of one tree's shape), its
    models fitted on every example of every table (threshold 0, chosen later).

    ``recalibrate_on``: refit only each model's intercept on this table (the validation
    split), keeping the coefficients: corrects models fitted on data whose exits are more
    often right than on new data (the training split's outputs)."""
    first = tables[0]
    if not sum(len(t) for t in tables):
        raise DynrouteError("fitting the scheduler needs held-out examples; got none")
    shape = first.facts.shape
    base = first.facts.base_macs["threshold"]
    exits: list[dict[str, Any] | None] = []
    for position, leaf in enumerate(shape.leaves):
        targets = _targets(first, position)
        if len(targets) < 2:
            exits.append(None)
            continue
        x = np.concatenate([_features(t, position) for t in tables])
        y = np.concatenate([t.correct[:, targets] for t in tables])
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        coefficients, intercepts = _fit_logistic((x - mean) / scale, y, l2)
        if recalibrate_on is not None:
            intercepts = _refit_intercepts(
                (_features(recalibrate_on, position) - mean) / scale,
                recalibrate_on.correct[:, targets],
                coefficients,
                intercepts,
            )
        cost = base[leaf]
        extra = [float(base[shape.leaves[j]] - cost) for j in targets]
        exits.append(
            {
                "targets": targets,
                "mean": mean.tolist(),
                "scale": scale.tolist(),
                "coefficients": coefficients.tolist(),
                "intercepts": intercepts.tolist(),
                "extra_macs": extra,
            }
        )
    answers = first.answers
    return replace(
        answers,
        name="scheduler",
        threshold=0.0,
        thresholds=None,
        scheduler={"features": list(SCHEDULER_FEATURES), "exits": exits},
    )


def _refit_intercepts(
    x: np.ndarray, y: np.ndarray, coefficients: np.ndarray, intercepts: np.ndarray
) -> np.ndarray:
    """Each model's intercept refitted on (x, y) with its coefficients held."""
    offsets = torch.from_numpy(x @ coefficients.T)
    yt = torch.from_numpy(y.astype(np.float64))
    b = torch.from_numpy(intercepts.copy()).requires_grad_(True)
    optimiser = torch.optim.LBFGS([b], max_iter=100, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(offsets + b, yt)
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return b.detach().numpy()


def cross_fitted_measures(
    table: ExitTable, extra: Sequence[ExitTable] = (), folds: int = FOLDS, **options: Any
) -> np.ndarray:
    """(N, leaves) scheduler measures of ``table``'s examples, each from models fitted on
    the other folds of ``table`` (plus every example of ``extra``)."""
    n = len(table)
    assignment = np.random.default_rng(0).permutation(n) % folds
    out = np.zeros((n, table.answer.shape[1]), dtype=np.float32)
    for fold in range(folds):
        held = assignment == fold
        fitting = [_subset(table, ~held), *extra]
        policy = fit_scheduler(fitting, **options)
        out[held] = _subset(table, held).measures(policy)
    return out


def scheduler_family(
    table: ExitTable,
    scheduler: Policy,
    count: int | None = None,
    measures: np.ndarray | None = None,
) -> list[tuple[Policy, dict[str, float]]]:
    """The scheduler's operating points on ``table`` (the split it was fitted on), as
    (deployable policy, point) pairs: each point is measured with cross-fitted models
    (``cross_fitted_measures``: what it would do on examples its models never saw), and
    stands for the models fitted on the whole split at the price that spends at most as
    much there. Choosing a point by its cross-fitted accuracy does not reward the models'
    fit to the split; its deployed price spends what the point promises, so a budget
    chosen on validation lands on new data. ``measures``: the cross-fitted measures, if
    the models were fitted on more than ``table`` (``cross_fitted_measures(extra=...)``)."""
    from dynroute.policies.fitting import THRESHOLD_QUANTILES, threshold_family

    count = count or THRESHOLD_QUANTILES
    if measures is None:
        measures = cross_fitted_measures(table)
    crossed = table.with_measures(scheduler, measures)
    held_out = [(p, crossed.point(e, p)) for p, e in threshold_family(crossed, scheduler, count)]
    in_sample = sorted(
        ((p, table.point(e, p)) for p, e in threshold_family(table, scheduler, count)),
        key=lambda pair: (pair[1]["mean_macs"], pair[1]["accuracy"]),
    )
    spends = np.asarray([point["mean_macs"] for _, point in in_sample])
    out = []
    for _, point in held_out:
        k = int(np.searchsorted(spends, point["mean_macs"], side="right")) - 1
        if k >= 0:
            out.append((in_sample[k][0], point))
    return out


def _subset(table: ExitTable, rows: np.ndarray) -> ExitTable:
    """The table's examples ``rows`` (same answers, same paths)."""
    return replace(
        table,
        outputs=table.outputs.subset(rows),
        answer=table.answer[rows],
        correct=table.correct[rows],
        candidates=table.candidates[rows],
        terminal=table.terminal[rows],
        _measures={},
        _offered={},
        _keep=[],
    )
