"""The claims of the guarantee studies (``dynroute study guarantees``): a guaranteed
accuracy target holds on data the thresholds never saw, and per-exit thresholds spend
fewer MACs under the same guarantee. They apply only at a scale with such a study.
"""

from __future__ import annotations

from dynroute.experiments.claims.common import (
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)
from dynroute.experiments.results import study_label
from dynroute.experiments.studies import NAIVE


def _rows(context: Context) -> list[tuple[str, dict]]:
    """(network label, row) of every guarantee study's rows, every method included."""
    return [
        (study_label(name, study), row)
        for name, study in sorted(context.studies.items())
        if study.get("study") == "guarantees"
        for row in study["rows"]
    ]


@register_claim
def guarantees_hold(context: Context) -> Claim | None:
    everything = _rows(context)
    if not everything:
        return None
    claim = (
        "guaranteed accuracy targets hold on unseen data: over random calibration/"
        "evaluation partitions, the violation rate is at most delta within two binomial "
        "standard errors, at every target and delta"
    )
    rows = [
        (name, r)
        for name, r in everything
        if r["method"] != NAIVE and r["violation_rate"] is not None
    ]
    if not rows:
        return Claim(claim, NOT_RUN, "no guarantee study (`dynroute study guarantees RUN`)")
    over = [
        (name, r) for name, r in rows if r["violation_rate"] > r["delta"] + 2 * r["standard_error"]
    ]

    # The cells over the bound, else the one nearest it (in the bound's own units).
    def margin(row: dict) -> float:
        return row["violation_rate"] - row["delta"] - 2 * row["standard_error"]

    shown = over or [max(rows, key=lambda nr: margin(nr[1]))]
    naive = [
        r["violation_rate"]
        for _, r in everything
        if r["method"] == NAIVE and r["violation_rate"] is not None
    ]
    naive_text = (
        f"; the naive point estimate violates at {100 * min(naive):.0f}–{100 * max(naive):.0f} %"
        if naive
        else ""
    )
    cells = "; ".join(
        f"{row['method']} on {name}, target {row['target']:g}, delta {row['delta']:g}: "
        f"{100 * row['violation_rate']:.1f} % of {row['partitions']} draws ({row['certified']} "
        f"certified; bound {100 * (row['delta'] + 2 * row['standard_error']):.1f} %)"
        for name, row in shown
    )
    return Claim(
        claim,
        NOT_SUPPORTED if over else SUPPORTED,
        f"{len(rows) - len(over)} of {len(rows)} (network, method, target, delta) cells "
        f"within; {'over' if over else 'the closest'}: {cells}{naive_text}",
    )


@register_claim
def per_exit_guarantees_save_more(context: Context) -> Claim | None:
    everything = _rows(context)
    if not everything:
        return None
    claim = (
        "under the same guarantee, per-exit thresholds spend fewer MACs than one threshold "
        "shared by every exit (the 'Fast yet Safe' baseline)"
    )
    cells: dict[tuple[str, float, float], dict[str, float]] = {}
    for name, row in everything:
        if row["macs_saved"] is not None and row["method"] != NAIVE:
            saved = cells.setdefault((name, row["target"], row["delta"]), {})
            saved[row["method"]] = row["macs_saved"]
    pairs = [
        (key, saved["per-exit thresholds"] - saved["one shared threshold"])
        for key, saved in cells.items()
        if len(saved) == 2
    ]
    if not pairs:
        return Claim(claim, NOT_RUN, "no guarantee study with both methods")
    better = sum(d > 0 for _, d in pairs)
    differences = [d for _, d in pairs]
    return Claim(
        claim,
        SUPPORTED if better == len(pairs) else NOT_SUPPORTED,
        f"per-exit thresholds save more at {better} of {len(pairs)} (network, target, "
        f"delta) cells; difference in the share of the deepest exit's MACs saved "
        f"{100 * min(differences):+.1f} to {100 * max(differences):+.1f} points",
    )
