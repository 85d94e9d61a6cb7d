"""The learned scheduler: a per-example exit decision fitted after the exits are frozen.

At each exit the scheduler reads only what the example has already computed (the exit's
answer and the raw answers of the exits it passed: ``SCHEDULER_FEATURES``) and estimates,
with one logistic model per exit it could still reach, how likely each of those exits is
to be right. Going on to a deeper exit j buys ``P(j right) - P(here right)`` accuracy for
``MACs(j) - MACs(here)``; the example stops unless some deeper exit promises more accuracy
per million MACs than a price, the policy's threshold (negated). One price trades accuracy
against MACs along the whole network, so a budget picks it like any threshold.

Unlike a confidence threshold, the scheduler can stop an example early because no deeper
exit is likely to get it right either (a hopeless example), and can send on a confident
one whose deeper exits are reliably better.

``fit_scheduler`` fits the models on held-out tables (the run's validation split, and
optionally more); ``cross_fitted_measures`` gives each validation example the measure of a
model fitted without it, so that choosing the price on validation does not reward the
models' fit to the very examples they were fitted on. Torch-free (Newton's method), like
every rule, so the export runtime decides with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.core.probabilities import log_softmax_all, sigmoid, softmax
from dynroute.core.rules.base import (
    THRESHOLD_QUANTILES,
    AnswerTable,
    ExitRule,
    register_rule,
    threshold_family,
)

if TYPE_CHECKING:
    from dynroute.core.policy import Policy

#: L2 penalty of the logistic models' coefficients (on standardised features).
SCHEDULER_L2 = 1e-3
#: Folds of the validation split for the cross-fitted measures.
FOLDS = 2
#: The scheduler's inputs, computed from what an example has already run.
SCHEDULER_FEATURES = (
    "max_probability",  # of the exit's answer
    "log_odds",  # log(p / (1 - p)) of that probability
    "margin",  # top probability minus the second
    "entropy",  # normalised entropy of the answer
    "previous_max_probability",  # of the exit passed last (raw), 0 for the first exit
    "agrees_with_previous",  # 1 if that exit's class is this answer's class
    "agreement",  # share of the exits passed whose class is this answer's class
    "previous_class_probability",  # this answer's probability of that exit's class
)


#: Scheduler models already checked, by id (kept alive here, so an id is not reused).
_CHECKED: dict[int, dict[str, Any]] = {}


@register_rule
class Scheduler(ExitRule):
    name = "scheduler"
    summary = (
        "leave unless a deeper exit promises more accuracy per MAC than the threshold's "
        "price (a model of each exit's correctness, fitted on held-out data)"
    )
    parameter = "scheduler"
    bounded = False
    learned = True
    fitted = True
    needs_history = True
    default_answers = "any"

    def check(self, policy: Policy) -> None:
        if not isinstance(policy.scheduler, dict) or not isinstance(
            policy.scheduler.get("exits"), list
        ):
            raise DynrouteError(
                "the scheduler policy needs its fitted `scheduler` (one model per exit): "
                "fit it with `calibrate --policy scheduler`"
            )
        known = _CHECKED.get(id(policy.scheduler))
        if known is not policy.scheduler:  # a family shares one dict: check it once
            scheduler_arrays(policy.scheduler)
            if len(_CHECKED) >= 256:
                _CHECKED.clear()
            _CHECKED[id(policy.scheduler)] = policy.scheduler

    def prepare(self, policy: Policy) -> list[dict[str, np.ndarray] | None]:
        assert policy.scheduler is not None
        return scheduler_arrays(policy.scheduler)

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        """Minus the most accuracy per million MACs that going on to a deeper exit promises
        (+inf where there is none): stop when it is at least minus the price."""
        model = state[position]
        n = answer.shape[0]
        if model is None or len(model["intercepts"]) < 2:
            return np.full(n, np.inf, dtype=np.float32)
        x = (scheduler_features(history, answer) - model["mean"]) / model["scale"]
        correct = sigmoid(x @ model["coefficients"].T + model["intercepts"])
        gain = (correct[:, 1:] - correct[:, :1]) / (model["extra_macs"][1:] / 1e6)
        return (-gain.max(axis=1)).astype(np.float32)

    def decision_macs(self, policy: Policy, position: int) -> int:
        """One model per deeper exit weighed, a multiply-add per feature."""
        assert policy.scheduler is not None
        entry = policy.scheduler["exits"][position]
        return 0 if entry is None else len(entry["intercepts"]) * len(SCHEDULER_FEATURES)

    def family(
        self, table: AnswerTable, fitted: Policy | None = None
    ) -> list[tuple[Policy, np.ndarray]]:
        scheduler = fitted if fitted is not None and fitted.name == self.name else None
        scheduler = scheduler or fit_scheduler([table])
        assert scheduler.scheduler is not None
        if all(entry is None for entry in scheduler.scheduler["exits"]):
            return []  # no exit has a deeper one to weigh
        return scheduler_family(table, scheduler)


def scheduler_features(history: np.ndarray | None, answer: np.ndarray) -> np.ndarray:
    """(N, len(SCHEDULER_FEATURES)) float64 inputs of the scheduler at one exit:
    ``answer`` (N, classes) the exit's answer, ``history`` (N, m, classes) the raw
    log-softmaxes of the exits passed (path order) or None."""
    p = softmax(answer).astype(np.float64)
    n = p.shape[0]
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] >= 2 else np.concatenate([p, p], 1)
    top = top2[:, 1]
    clipped = np.clip(top, 1e-6, 1 - 1e-6)
    entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1) / math.log(p.shape[1])
    label = p.argmax(axis=1)
    previous_top = np.zeros(n)
    agrees = np.zeros(n)
    agreement = np.zeros(n)
    previous_class = np.zeros(n)
    if history is not None and history.shape[1]:
        last = history[:, -1].astype(np.float64)
        previous_top = np.exp(last.max(axis=1))
        previous_label = last.argmax(axis=1)
        agrees = (previous_label == label).astype(np.float64)
        agreement = (history.argmax(axis=2) == label[:, None]).mean(axis=1)
        previous_class = p[np.arange(n), previous_label]
    return np.stack(
        [
            top,
            np.log(clipped) - np.log1p(-clipped),
            top - top2[:, 0],
            entropy,
            previous_top,
            agrees,
            agreement,
            previous_class,
        ],
        axis=1,
    )


def scheduler_arrays(scheduler: dict[str, Any]) -> list[dict[str, np.ndarray] | None]:
    """The scheduler's per-exit models as arrays (None for an exit that never decides)."""
    out: list[dict[str, np.ndarray] | None] = []
    width = len(SCHEDULER_FEATURES)
    for entry in scheduler["exits"]:
        if entry is None:
            out.append(None)
            continue
        if not isinstance(entry, dict):
            raise DynrouteError("a scheduler exit must be an object (or null)")
        try:
            arrays = {
                key: np.asarray(entry[key], np.float64)
                for key in ("mean", "scale", "coefficients", "intercepts", "extra_macs")
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise DynrouteError(f"a scheduler exit is malformed ({exc})") from None
        targets = len(arrays["intercepts"]) if arrays["intercepts"].ndim == 1 else -1
        shapes_ok = (
            arrays["mean"].shape == (width,)
            and arrays["scale"].shape == (width,)
            and arrays["coefficients"].shape == (targets, width)
            and arrays["extra_macs"].shape == (targets,)
            and targets >= 1
        )
        finite = all(np.isfinite(a).all() for a in arrays.values())
        if not shapes_ok or not finite or (arrays["scale"] <= 0).any():
            raise DynrouteError("a scheduler exit has parameters of the wrong shape or value")
        if (arrays["extra_macs"][1:] <= 0).any():
            raise DynrouteError("a scheduler's deeper exits must cost more MACs")
        out.append(arrays)
    return out


# --------------------------------------------------------------------------- fitting


def _features(table: AnswerTable, position: int) -> np.ndarray:
    shape = table.facts.shape
    leaf = shape.leaves[position]
    passed = [shape.leaf_position[c] for c in shape.history[leaf]]
    history = log_softmax_all(table.outputs.logits[:, passed]) if passed else None
    return scheduler_features(history, table.answer[:, position])


def _targets(table: AnswerTable, position: int) -> list[int]:
    """The exit itself, then the exits an example can still reach from it (leaf order)."""
    shape = table.facts.shape
    deeper = shape.deeper[shape.leaves[position]]
    return [position, *(shape.leaf_position[leaf] for leaf in deeper)]


#: Logits are kept within this bound while fitting (an exit always or never right).
_LOGIT_BOUND = 30.0


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent logistic regressions of each column of ``y`` (N, T) on ``x`` (N, F):
    coefficients (T, F) and intercepts (T,) minimising the mean cross-entropy over all N*T
    entries plus ``l2`` times the coefficients' squared norm (Newton's method with
    step halving: the problem is convex)."""
    n, width = x.shape
    targets = y.shape[1]
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    # Per column, the same optimum as the joint mean: each column's penalty scales by T.
    penalty = np.full(width + 1, 2 * l2 * targets)
    penalty[-1] = 0.0
    coefficients = np.zeros((targets, width))
    intercepts = np.zeros(targets)
    for t in range(targets):
        mean = float(np.clip(y[:, t].mean(), 1e-4, 1 - 1e-4))
        theta = np.zeros(width + 1)
        theta[-1] = math.log(mean / (1 - mean))

        def objective(theta: np.ndarray, t: int = t) -> float:
            return _bce(design @ theta, y[:, t]) + 0.5 * float(penalty @ theta**2)

        value = objective(theta)
        for _ in range(100):
            p = sigmoid(design @ theta)
            gradient = design.T @ (p - y[:, t]) / n + penalty * theta
            hessian = (design * (p * (1 - p))[:, None]).T @ design / n + np.diag(penalty)
            hessian += 1e-10 * np.eye(width + 1)
            step = np.linalg.solve(hessian, gradient)
            scale = 1.0
            while scale > 1e-6:
                trial = theta - scale * step
                trial[-1] = np.clip(trial[-1], -_LOGIT_BOUND, _LOGIT_BOUND)
                trial_value = objective(trial)
                if trial_value <= value:
                    break
                scale /= 2
            else:
                break
            converged = value - trial_value < 1e-12
            theta, value = trial, trial_value
            if converged:
                break
        coefficients[t], intercepts[t] = theta[:-1], theta[-1]
    return coefficients, intercepts


def _refit_intercepts(
    x: np.ndarray, y: np.ndarray, coefficients: np.ndarray, intercepts: np.ndarray
) -> np.ndarray:
    """Each model's intercept refitted on (x, y) with its coefficients held (Newton)."""
    offsets = x @ coefficients.T
    b = intercepts.astype(np.float64).copy()
    for _ in range(100):
        p = sigmoid(offsets + b)
        gradient = (p - y).mean(axis=0)
        curvature = np.maximum((p * (1 - p)).mean(axis=0), 1e-10)
        step = np.clip(gradient / curvature, -5.0, 5.0)
        b = np.clip(b - step, -_LOGIT_BOUND, _LOGIT_BOUND)
        if np.abs(step).max() < 1e-10:
            break
    return b


def fit_scheduler(
    tables: Sequence[AnswerTable],
    l2: float = SCHEDULER_L2,
    recalibrate_on: AnswerTable | None = None,
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
        y = np.concatenate([t.correct[:, targets] for t in tables]).astype(np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        coefficients, intercepts = _fit_logistic((x - mean) / scale, y, l2)
        if recalibrate_on is not None:
            intercepts = _refit_intercepts(
                (_features(recalibrate_on, position) - mean) / scale,
                recalibrate_on.correct[:, targets].astype(np.float64),
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
    return replace(
        first.answers,
        name="scheduler",
        threshold=0.0,
        thresholds=None,
        scheduler={"features": list(SCHEDULER_FEATURES), "exits": exits},
    )


def cross_fitted_measures(
    table: AnswerTable, extra: Sequence[AnswerTable] = (), folds: int = FOLDS, **options: Any
) -> np.ndarray:
    """(N, leaves) scheduler measures of ``table``'s examples, each from models fitted on
    the other folds of ``table`` (plus every example of ``extra``)."""
    n = len(table)
    assignment = np.random.default_rng(0).permutation(n) % folds
    out = np.zeros((n, table.answer.shape[1]), dtype=np.float32)
    for fold in range(folds):
        held = assignment == fold
        fitting = [table.subset(~held), *extra]
        policy = fit_scheduler(fitting, **options)
        out[held] = table.subset(held).measures(policy)
    return out


def scheduler_family(
    table: AnswerTable,
    scheduler: Policy,
    count: int | None = None,
    measures: np.ndarray | None = None,
) -> list[tuple[Policy, np.ndarray]]:
    """The scheduler's operating points on ``table`` (the split it was fitted on), as
    (deployable policy, exit positions) pairs: each point's exits come from cross-fitted
    models (``cross_fitted_measures``: what it would do on examples its models never saw),
    and stand for the models fitted on the whole split at the price that spends at most as
    much there. Choosing a point by its cross-fitted accuracy does not reward the models'
    fit to the split; its deployed price spends what the point promises, so a budget
    chosen on validation lands on new data. ``measures``: the cross-fitted measures, if
    the models were fitted on more than ``table`` (``cross_fitted_measures(extra=...)``)."""
    count = count or THRESHOLD_QUANTILES
    if measures is None:
        measures = cross_fitted_measures(table)
    crossed = table.with_measures(scheduler, measures)
    held_out = threshold_family(crossed, scheduler, count)
    in_sample = sorted(
        ((p, table.point(e, p)) for p, e in threshold_family(table, scheduler, count)),
        key=lambda pair: (pair[1]["mean_macs"], pair[1]["accuracy"]),
    )
    spends = np.asarray([point["mean_macs"] for _, point in in_sample])
    out = []
    for policy, exits in held_out:
        k = int(np.searchsorted(spends, crossed.point(exits, policy)["mean_macs"], "right")) - 1
        if k >= 0:
            out.append((in_sample[k][0], exits))
    return out
