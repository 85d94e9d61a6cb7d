"""The learned scheduler: per-example exit decisions that weigh what deeper exits promise."""

from __future__ import annotations

import numpy as np
import pytest

from dynroute.core import selection
from dynroute.core.rules.base import threshold_family
from dynroute.core.rules.scheduler import SCHEDULER_FEATURES, cross_fitted_measures, fit_scheduler
from dynroute.nn.models import build_model
from dynroute.policies.exit_table import DenseOutputs, exit_table

CLASSES = 4


@pytest.fixture(scope="module")
def chain():
    return build_model("chain", num_classes=CLASSES).eval()


def hopeless_mixture(n: int, seed: int) -> DenseOutputs:
    """Half the examples grow clear with depth; the other half stay unsure and mostly wrong
    at every exit. The first two exits are unsure and mostly wrong for both; only whether
    they agree tells the two apart. A confidence threshold sends both deep; a scheduler
    can stop the hopeless half at the second exit."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    hopeless = rng.random(n) < 0.5
    eye = np.eye(CLASSES, dtype=np.float32)
    logits = np.zeros((n, 8, CLASSES), np.float32)
    first_guess = rng.integers(0, CLASSES, n)
    for k in range(8):
        noise = rng.standard_normal((n, CLASSES)).astype(np.float32) * 0.3
        if k < 2:  # the clear half guesses the same class twice, the hopeless half not
            guess = np.where(hopeless, rng.integers(0, CLASSES, n), first_guess)
            logits[:, k] = 0.6 * eye[guess] + noise
        else:
            target = np.where(hopeless, rng.integers(0, CLASSES, n), labels)
            strength = np.where(hopeless, 0.3, 0.35 * (k - 1))[:, None]
            logits[:, k] = strength * eye[target] + noise
    return DenseOutputs(logits, {}, labels)


def test_the_scheduler_stops_hopeless_examples_and_beats_a_threshold(chain) -> None:
    fitting = exit_table(chain, hopeless_mixture(4000, 0))
    fresh = exit_table(chain, hopeless_mixture(4000, 1))
    scheduler = fit_scheduler([fitting])
    assert scheduler.scheduler["features"] == list(SCHEDULER_FEATURES)
    crossed = fitting.with_measures(scheduler, cross_fitted_measures(fitting))
    budget = 0.6 * fitting.facts.leaf_macs(scheduler).max()

    def on_fresh(family) -> dict[str, float]:
        points = []
        for policy, exits in family:
            point = crossed.point(exits, policy) if policy.name == "scheduler" else None
            point = point or fitting.point(exits, policy)
            points.append((point, policy))
        chosen = selection.within_budget(
            [_Point(p["mean_macs"], p["accuracy"], q) for p, q in points], budget
        )
        return fresh.point(fresh.exits(chosen.policy), chosen.policy)

    learned = on_fresh(threshold_family(crossed, scheduler))
    confidence = on_fresh(threshold_family(fitting, "confidence"))
    assert learned["mean_macs"] <= 1.05 * budget
    assert learned["accuracy"] > confidence["accuracy"] + 0.05


class _Point:
    def __init__(self, mean_macs: float, accuracy: float, policy) -> None:
        self.mean_macs, self.accuracy, self.policy = mean_macs, accuracy, policy


def test_cross_fitted_measures_come_from_models_that_never_saw_the_example(chain) -> None:
    table = exit_table(chain, hopeless_mixture(600, 2))
    full = table.measures(fit_scheduler([table]))
    crossed = cross_fitted_measures(table)
    assert crossed.shape == full.shape
    finite = np.isfinite(full[:, 0])
    assert not np.allclose(crossed[finite, 0], full[finite, 0])
    assert np.corrcoef(crossed[finite, 0], full[finite, 0])[0, 1] > 0.8
    assert np.isinf(full[:, -1]).all()  # the last exit has nothing deeper to weigh


def test_the_scheduler_counts_its_own_macs(chain) -> None:
    from dynroute.core.policy import Policy

    table = exit_table(chain, hopeless_mixture(300, 3))
    scheduler = fit_scheduler([table])
    with_models = table.facts.leaf_macs(scheduler)
    plain = table.facts.leaf_macs(Policy("confidence", 0.5))
    extra = with_models - plain
    assert (extra[:-1] > 0).all()
    assert extra[0] == 8 * len(SCHEDULER_FEATURES)  # its own model and seven deeper exits'
