"""Parameters fitted on held-out data: recalibrated and combined answers, threshold
families, the budgeted scheme."""

from __future__ import annotations

import numpy as np
import pytest

from dynroute.core.errors import DynrouteError
from dynroute.core.rules.base import threshold_family
from dynroute.core.rules.budgeted import budgeted_family, budgeted_thresholds
from dynroute.nn.models import build_model
from dynroute.policies.exit_table import TreeFacts, exit_table
from dynroute.policies.fitting import fit_answers
from helpers.outputs import chain_outputs

CLASSES = 4


@pytest.fixture(scope="module")
def chain():
    return build_model("chain", num_classes=CLASSES).eval()


def _nll(table) -> np.ndarray:
    """Per exit, the mean negative log-likelihood of the table's answers."""
    from dynroute.core.probabilities import log_softmax

    n, leaves, classes = table.answer.shape
    log_p = log_softmax(table.answer.reshape(n * leaves, classes)).reshape(n, leaves, classes)
    return -log_p[np.arange(n), :, table.labels].mean(axis=0)


def test_recalibrated_answers_fit_new_data_better_than_raw(chain) -> None:
    facts = TreeFacts.of(chain)
    fitted = fit_answers(facts, chain_outputs(4000, 0), "calibrated")
    fresh = chain_outputs(4000, 1)
    raw, calibrated = exit_table(facts, fresh), exit_table(facts, fresh, fitted)
    assert (_nll(calibrated) < _nll(raw) - 0.01).all()  # the exits were overconfident
    assert all(not any(w[:-1]) for w in fitted.weights)  # each exit weighs only itself


def test_combined_answers_beat_each_exit_alone_on_new_data(chain) -> None:
    facts = TreeFacts.of(chain)
    fitted = fit_answers(facts, chain_outputs(4000, 0), "combined")
    fresh = chain_outputs(4000, 1)
    raw, combined = exit_table(facts, fresh), exit_table(facts, fresh, fitted)
    raw_accuracy, combined_accuracy = raw.correct.mean(0), combined.correct.mean(0)
    assert combined_accuracy[0] == pytest.approx(raw_accuracy[0], abs=0.02)  # alone
    assert (combined_accuracy[3:] > raw_accuracy[3:] + 0.02).all()  # deep exits gain
    assert len(fitted.weights[0]) == 1 and len(fitted.weights[-1]) == 8
    with pytest.raises(DynrouteError, match="calibrated or combined"):
        fit_answers(facts, fresh, "raw")


def test_budgeted_shares_follow_the_geometric_distribution(chain) -> None:
    table = exit_table(chain, chain_outputs(5000, 2))
    for q in (0.5, 1.0, 2.0):
        exits = table.exits(budgeted_thresholds(table, q))
        shares = np.bincount(exits, minlength=8) / len(exits)
        expected = q ** np.arange(8, dtype=np.float64)  # 8 exits, the last takes the rest
        expected /= expected.sum()
        assert np.allclose(shares, expected, atol=0.01)


def test_families_span_cheapest_to_dearest(chain) -> None:
    table = exit_table(chain, chain_outputs(2000, 5))
    leaf_macs = table.facts.leaf_macs(table.answers)
    for family in (threshold_family(table, "confidence"), budgeted_family(table, count=51)):
        macs = sorted(table.point(exits, policy)["mean_macs"] for policy, exits in family)
        assert macs[0] == pytest.approx(leaf_macs[0], rel=0.01)
        assert macs[-1] > 0.9 * leaf_macs[-1]
