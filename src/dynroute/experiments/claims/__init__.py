"""The paper's claims, and dynroute's own, checked from result files alone.

Each claim (docs/method.md §7) gets a verdict (supported / not supported / not run) and the
numbers behind it. A claim is one function, registered with ``@register_claim`` in the
topic module it belongs to; ``check_claims`` runs every registered claim, topic by topic in
the order of ``TOPICS`` and, within a topic, in the order the functions are defined, so the
report's table keeps its order with no list of claims to keep by hand. Claims registered
outside these modules come last. ``dynroute.plots.report`` only renders what they find.
"""

from __future__ import annotations

from dynroute.experiments.claims import (
    footing,
    guarantees,
    lead,
    paper,
    precision,
    recipes,
    routing,
)
from dynroute.experiments.claims.common import (
    CLAIMS,
    DATASETS,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimCheck,
    Context,
    register_claim,
)
from dynroute.experiments.claims.curves import band_for, mmacs, on_shared_k_cpt, peak
from dynroute.experiments.claims.lead import LEAD_GOALS
from dynroute.experiments.results import Results

#: The topic modules, in the order their claims appear in the report: the paper's own
#: claims, routing beyond them, the equal-footing policy tables, the guarantee studies, the
#: exit-training recipes, the lead studies.
TOPICS = (paper, routing, footing, guarantees, recipes, lead, precision)

__all__ = [
    "CLAIMS",
    "DATASETS",
    "LEAD_GOALS",
    "NOT_RUN",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "TOPICS",
    "Claim",
    "ClaimCheck",
    "Context",
    "band_for",
    "check_claims",
    "mmacs",
    "on_shared_k_cpt",
    "peak",
    "register_claim",
]


def _position(check: ClaimCheck) -> int:
    """Where a claim's topic stands in the report (after every topic when it has none)."""
    names = [topic.__name__ for topic in TOPICS]
    return names.index(check.__module__) if check.__module__ in names else len(names)


def check_claims(
    results: Results,
    variants: dict[str, Results] | None = None,
    studies: dict[str, dict] | None = None,
    bf16: dict[str, Results] | None = None,
) -> list[Claim]:
    """Every registered claim's verdict, in report order; ``variants``: the same registry
    trained on other seeds; ``studies``: the scale's studies (``dynroute study``); ``bf16``:
    networks trained in bfloat16, by seed. A claim that does not apply at this scale (it
    returns None) is left out."""
    context = Context(results, variants, studies, bf16)
    found: list[Claim] = []
    for check in sorted(CLAIMS, key=_position):  # stable: definition order within a topic
        checked = check(context)
        if isinstance(checked, Claim):
            found.append(checked)
        elif checked is not None:
            found += checked
    return found
