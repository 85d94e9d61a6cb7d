"""The equal-footing claims: they apply only where policy tables exist, and read the
statistics of ``dynroute.experiments.policy_claims``."""

from __future__ import annotations

import pytest

from dynroute.experiments import policy_claims
from dynroute.experiments.claims import NOT_RUN, NOT_SUPPORTED, SUPPORTED, Context
from dynroute.experiments.claims.footing import (
    budgets_met,
    learned_saves_macs,
    recalibration_helps,
    recipe_beats_multi_exit,
)
from dynroute.experiments.policy_claims import Savings


@pytest.fixture
def one_table(monkeypatch) -> None:
    """A scale whose results hold one (empty) equal-footing table."""
    monkeypatch.setattr(policy_claims, "equal_footing_tables", lambda _: ([("net/a", {})], []))


def test_the_table_claims_are_left_out_without_a_table() -> None:
    context = Context({})
    assert recalibration_helps(context) is None and learned_saves_macs(context) is None
    # Compared with multi-exit training on every dataset, tables or not.
    found = recipe_beats_multi_exit(context)
    assert [c.verdict for c in found] == [NOT_RUN, NOT_RUN]
    assert found[1].claim.endswith("(CIFAR-10)")


def test_the_saving_claim_reads_the_median_and_its_bootstrap_interval(
    monkeypatch, one_table
) -> None:
    found = Savings([-0.5, 0.2, 0.3], [0.1 + 0.001 * k for k in range(200)])
    monkeypatch.setattr(policy_claims, "mac_savings", lambda _: found)
    claim = learned_saves_macs(Context({}))
    assert claim.verdict == SUPPORTED, claim.evidence
    assert "median saving +20.0 % of the baseline's MACs over 3 cells" in claim.evidence
    spread = Savings([0.2, 0.3], [-0.05 + 0.001 * k for k in range(200)])
    monkeypatch.setattr(policy_claims, "mac_savings", lambda _: spread)
    assert learned_saves_macs(Context({})).verdict == NOT_SUPPORTED  # its interval reaches 0
    monkeypatch.setattr(policy_claims, "mac_savings", lambda _: None)
    assert learned_saves_macs(Context({})).verdict == NOT_RUN


def test_a_budget_overspent_beyond_the_tolerance_fails(monkeypatch, one_table) -> None:
    cells = [(0.01, "net/a", "confidence/raw", 1e6), (0.2, "net/a", "entropy/raw", 2e6)]
    monkeypatch.setattr(policy_claims, "budget_cells", lambda _: cells)
    claim = budgets_met(Context({}))
    assert claim.verdict == NOT_SUPPORTED
    assert claim.evidence.startswith("1 of 2 (network, budget, policy) cells within")
    assert "+20.0 % (entropy/raw on net/a at 2.00 M)" in claim.evidence
    monkeypatch.setattr(policy_claims, "budget_cells", lambda _: cells[:1])
    assert budgets_met(Context({})).verdict == SUPPORTED
