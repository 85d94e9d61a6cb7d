"""dynroute's claims about routing beyond the paper's curves: learned routers against
confidence thresholds on the same exits, actor training against multi-exit training, and
a backbone the paper never used.

The router claims pair the two sides per test example (exact McNemar) at matched mean MACs
inside the comparison band, from the policy analyses that sweeps write.
"""

from __future__ import annotations

import numpy as np

from dynroute.experiments.claims.common import (
    DATASETS,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)
from dynroute.experiments.claims.curves import (
    band_for,
    band_label,
    beats_static,
    mac_ratio,
    mean_gain,
    noise_note,
)
from dynroute.policies.statistics import mcnemar_counts, mcnemar_p_value, unpack_bits


def _missing_policies(
    context: Context, claim: str, *names: str, band: tuple[float, float] | None = None
) -> Claim:
    """A routing-policy claim whose experiments lack policy analyses (result files from
    before sweeps wrote them, or no network in the comparison band)."""
    absent = [n for n in names if not context.policies.get(n)]
    if not absent:
        label = band_label(band or context.band)
        return Claim(claim, NOT_RUN, f"no learned operating point in {label}")
    return Claim(claim, NOT_RUN, f"no policy analyses: {', '.join(absent)}")


def _learned_points(
    context: Context, experiment: str, band: tuple[float, float] | None = None
) -> list[dict]:
    """The learned operating points of an experiment's networks, inside the band."""
    low, high = band or context.band
    return [
        point
        for analysis in context.policies.get(experiment, {}).values()
        for point in analysis["learned"]
        if low <= point["mean_macs"] <= high
    ]


def _paired_verdict(
    claim: str, pairs: list[tuple[int, int, float]], first: str, second: str
) -> Claim:
    """Supported when ``first`` is right on more of the examples only one of the two
    gets right, pooled over the operating points, with exact McNemar p < 0.05.

    Pooling treats the points' discordant pairs as independent; they share test images,
    so the p-value is a guide, and each point's own difference is given too."""
    only_first = sum(b for b, _, _ in pairs)
    only_second = sum(c for _, c, _ in pairs)
    p_value = mcnemar_p_value(only_first, only_second)
    wins = sum(d > 0 for _, _, d in pairs)
    mean = float(np.mean([d for _, _, d in pairs]))
    verdict = SUPPORTED if only_first > only_second and p_value < 0.05 else NOT_SUPPORTED
    return Claim(
        claim,
        verdict,
        f"{first} more accurate than {second} at {wins}/{len(pairs)} points (mean "
        f"{100 * mean:+.2f} points); examples only one gets right, pooled: {only_first} vs "
        f"{only_second}, McNemar p = {p_value:.2g}",
    )


@register_claim
def learned_beats_thresholds(context: Context) -> Claim:
    claim = (
        "learned routers beat confidence thresholds on the same exits "
        f"(hybrid actor, matched mean MACs, {band_label(context.band)})"
    )
    points = _learned_points(context, "hybrid-actor")
    if not points:
        return _missing_policies(context, claim, "hybrid-actor")
    rows = [p["against_thresholds"]["confidence"] for p in points]
    return _paired_verdict(
        claim,
        [(r["only_first"], r["only_second"], r["accuracy_difference"]) for r in rows],
        "learned routing",
        "the same net's confidence threshold at its nearest mean MACs",
    )


@register_claim
def actor_beats_multi_exit(context: Context) -> list[Claim]:
    """Per dataset: its actor nets against its multi-exit net, in the band of its own
    static curve."""
    return [_actor_against_multi_exit(context, dataset) for dataset in DATASETS]


def _actor_against_multi_exit(context: Context, dataset: str) -> Claim:
    band = band_for(context.curves.get(f"{dataset}-static", []))
    claim = "actor training + learned routers beat multi-exit training + confidence thresholds"
    if dataset == "hybrid":
        claim += f" (the field's standard) at equal mean MACs (hybrid, {band_label(band)})"
    else:
        claim += f" on {DATASETS[dataset]} too, at equal mean MACs ({band_label(band)})"
    actor, multi_exit = f"{dataset}-actor", f"{dataset}-multi-exit"
    points = _learned_points(context, actor, band)
    baseline = [
        p
        for analysis in context.policies.get(multi_exit, {}).values()
        for p in analysis["confidence"]
        if "correct_bits" in p
    ]
    if not points or not baseline:
        return _missing_policies(context, claim, actor, multi_exit, band=band)
    n = next(iter(context.policies[multi_exit].values()))["num_examples"]
    pairs = []
    for point in points:
        matched = min(baseline, key=lambda p: abs(p["mean_macs"] - point["mean_macs"]))
        counts = mcnemar_counts(
            unpack_bits(point["correct_bits"], n), unpack_bits(matched["correct_bits"], n)
        )
        pairs.append((*counts, point["accuracy"] - matched["accuracy"]))
    return _paired_verdict(
        claim,
        pairs,
        "the actor",
        "the multi-exit net's confidence threshold at the nearest MACs",
    )


@register_claim
def resnet(context: Context) -> Claim:
    claim = (
        "dynamic routing beats static truncations on a backbone the paper never used "
        "(ResNet-18 exits, CIFAR-10)"
    )
    names = ("cifar10-resnet18-static", "cifar10-resnet18-actor")
    if not context.has(*names):
        return context.missing(claim, *names)
    static, actor = context.curves[names[0]], context.curves[names[1]]
    gain = mean_gain(static, actor)
    if gain is None:
        return Claim(claim, NOT_RUN, "curves do not overlap the static MAC range")
    ratio = mac_ratio(static, actor)
    saving = "never reaches it" if ratio is None else f"needs {ratio[2]:.2f}× fewer MACs"
    wins, rule = beats_static(static, actor)
    return Claim(
        claim,
        SUPPORTED if wins else NOT_SUPPORTED,
        f"mean error reduction vs the truncations {100 * gain[0]:+.2f} points over "
        f"{gain[1]} nets ({rule}); at the best truncation's accuracy the actor curve "
        f"{saving}{noise_note(actor)}",
    )
