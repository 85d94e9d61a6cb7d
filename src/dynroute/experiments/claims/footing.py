"""The claims that the equal-footing policy tables (``dynroute.policies.table``) support.

Each claim tests one family of distinct binding cells with Holm's correction; the cells,
the judge and the MAC savings are ``dynroute.experiments.policy_claims``. The
decomposition's claims (recalibration, combination, learned decisions, savings, budgets,
validation splits) apply only at a scale whose results carry such tables.
"""

from __future__ import annotations

from dynroute.experiments import policy_claims
from dynroute.experiments.claims.common import (
    DATASETS,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)
from dynroute.experiments.results import Results


def tables(results: Results) -> list[tuple[str, dict]]:
    """(network label, table) of every equal-footing policy table (``Context.once``)."""
    return policy_claims.equal_footing_tables(results)[0]


@register_claim
def recipe_beats_multi_exit(context: Context) -> list[Claim]:
    """Per dataset and budget, dynroute's recipe chosen on validation (any network of the
    dataset's chain experiments, any policy) against the multi-exit net's best baseline."""
    return [_recipe_against_multi_exit(context, dataset) for dataset in DATASETS]


def _recipe_against_multi_exit(context: Context, dataset: str) -> Claim:
    claim = (
        "dynroute's best recipe (any training, any policy, chosen on validation) beats "
        f"multi-exit training + the best equal-footing baseline ({DATASETS[dataset]})"
    )
    chains = (f"{dataset}-multi-exit", f"{dataset}-actor")
    chain_tables = [
        (label, table) for label, table in context.once(tables) if label.split("/")[0] in chains
    ]
    pairs = policy_claims.recipe_cells(chain_tables, f"{dataset}-multi-exit/multi-exit")
    if not pairs:
        return Claim(claim, NOT_RUN, f"no equal-footing policy table for {dataset}-multi-exit")
    verdict = policy_claims.judge(cell for cell, _ in pairs)
    chosen = ", ".join(sorted({label for _, label in pairs}))
    return Claim(
        claim,
        SUPPORTED if verdict.supported else NOT_SUPPORTED,
        f"chosen from {chosen}; "
        + verdict.describe("the recipe", "multi-exit + the best baseline"),
    )


def _step_claim(context: Context, step: str, claim: str, first: str, second: str) -> Claim | None:
    """A decomposition step against the step before it, where tables exist."""
    equal_footing = context.once(tables)
    if not equal_footing:
        return None
    cells = policy_claims.step_cells(equal_footing, step)
    if not cells:
        return Claim(claim, NOT_RUN, "no equal-footing policy table")
    verdict = policy_claims.judge(cells)
    return Claim(
        claim, SUPPORTED if verdict.supported else NOT_SUPPORTED, verdict.describe(first, second)
    )


@register_claim
def recalibration_helps(context: Context) -> Claim | None:
    return _step_claim(
        context,
        "+ recalibration",
        "recalibrating each exit (a temperature and a bias per class, fitted on validation) "
        "beats the best rule on raw exits at the same budget",
        "the best rule on raw or recalibrated exits",
        "the best rule on raw exits",
    )


@register_claim
def combination_helps(context: Context) -> Claim | None:
    return _step_claim(
        context,
        "+ combination",
        "combining the answers already computed (a running ensemble, fitted on validation) "
        "beats the best rule on recalibrated exits at the same budget",
        "the best rule on any answers",
        "the best rule on raw or recalibrated exits",
    )


@register_claim
def learned_decisions_help(context: Context) -> Claim | None:
    equal_footing = context.once(tables)
    if not equal_footing:
        return None
    claim = (
        "a learned per-example exit decision (the paper's routers or the scheduler, the "
        "one most accurate on validation) beats the best equal-footing baseline at the "
        "same budget"
    )
    cells = policy_claims.learned_cells(equal_footing)
    if not cells:
        return Claim(claim, NOT_RUN, "no equal-footing policy table with a learned decision")
    verdict = policy_claims.judge(cells)
    return Claim(
        claim,
        SUPPORTED if verdict.supported else NOT_SUPPORTED,
        verdict.describe("the learned decision", "the best baseline (chosen on validation)"),
    )


@register_claim
def learned_saves_macs(context: Context) -> Claim | None:
    equal_footing = context.once(tables)
    if not equal_footing:
        return None
    claim = (
        "the learned decision (the one most accurate on validation) needs fewer MACs than "
        "the best baseline at the accuracy the baseline reaches within the budget. Rule, "
        "fixed before measuring: the median saving over distinct (network, families, "
        "accuracy) cells where both test envelopes still rise (the accuracy at least one "
        "standard error below both peaks), supported when its 95 % bootstrap interval "
        "(test examples resampled, members' MACs held) lies above 0"
    )
    savings = policy_claims.mac_savings(equal_footing)
    if savings is None:
        return Claim(claim, NOT_RUN, "no MAC saving measured (format 3 policy tables)")
    low, high = savings.interval()
    values = savings.values
    return Claim(
        claim,
        SUPPORTED if low > 0 else NOT_SUPPORTED,
        f"median saving {100 * savings.median:+.1f} % of the baseline's MACs over "
        f"{len(values)} cells (95 % interval {100 * low:+.1f} to {100 * high:+.1f} %); "
        f"cells from {100 * min(values):+.1f} to {100 * max(values):+.1f} %",
    )


@register_claim
def budgets_met(context: Context) -> Claim | None:
    """Whether a policy fitted to a budget on validation stays within it on test."""
    equal_footing = context.once(tables)
    if not equal_footing:
        return None
    tolerance = policy_claims.BUDGET_TOLERANCE
    claim = (
        "every policy fitted to a MAC budget on validation spends at most the budget "
        f"+{100 * tolerance:.0f} % on test (every equal-footing policy table)"
    )
    cells = policy_claims.budget_cells(equal_footing)
    if not cells:
        return Claim(claim, NOT_RUN, "no equal-footing policy table")
    low, high = min(cells), max(cells)
    over = sum(deviation > tolerance for deviation, *_ in cells)
    return Claim(
        claim,
        NOT_SUPPORTED if over else SUPPORTED,
        f"{len(cells) - over} of {len(cells)} (network, budget, policy) cells within; test "
        f"MACs from {100 * low[0]:+.1f} % ({low[2]} on {low[1]} at {low[3] / 1e6:.2f} M) to "
        f"{100 * high[0]:+.1f} % ({high[2]} on {high[1]} at {high[3] / 1e6:.2f} M) of the "
        "budget (a policy may spend less: it takes its most accurate member within budget)",
    )


@register_claim
def learned_across_splits(context: Context) -> Claim | None:
    equal_footing = context.once(tables)
    if not equal_footing:
        return None
    claim = (
        "the learned decision's mean gain over the best baseline (over the distinct binding "
        "budgets) is positive on at least 2 of 3 validation splits, for every network "
        "trained on 3 (a sign: each split's mean is given with its standard error, and "
        "only a mean beyond two standard errors is more than noise)"
    )
    networks = sorted({label for label, _ in equal_footing})
    spread = policy_claims.split_spread({"0": context.results, **context.variants}, networks)
    rows = {
        label: steps["learned vs best baseline"]
        for label, steps in spread.items()
        if len(steps.get("learned vs best baseline", [])) >= 3
    }
    if not rows:
        return Claim(claim, NOT_RUN, "no network has equal-footing tables on 3 splits")
    parts, ok = [], True
    for label, gains in rows.items():
        positive = sum(g.mean > 0 for g in gains)
        beyond = sum(abs(g.mean) > 2 * g.standard_error for g in gains)
        ok &= positive >= 2
        shown = ", ".join(f"{100 * g.mean:+.2f} ± {100 * g.standard_error:.2f}" for g in gains)
        parts.append(
            f"{label}: positive on {positive} of {len(gains)} ({shown} points; beyond two "
            f"standard errors on {beyond})"
        )
    return Claim(claim, SUPPORTED if ok else NOT_SUPPORTED, "; ".join(parts))
