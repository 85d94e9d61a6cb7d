"""Comparing two curves of the same data, as the claims judge them.

A dynamic curve is held against a static one through the static *frontier*
(``dynroute.policies.curves``), and every difference is weighed against its binomial noise,
so that a claim is never supported by a gain smaller than the test set can resolve.
"""

from __future__ import annotations

import math

import numpy as np

from dynroute.policies.curves import CurvePoint, error_at, macs_for_accuracy

#: The paper's comparison band (the actor must beat static at every budget in it), in MACs,
#: for the hybrid chain whose deepest static net costs PAPER_DEEPEST_STATIC_MACS. Other image
#: sizes, widths or backbones get the same fractions of their own deepest static net.
PAPER_BAND = (5e6, 15e6)
PAPER_DEEPEST_STATIC_MACS = 20_551_424.0


def band_for(static: list[CurvePoint]) -> tuple[float, float]:
    """The comparison band scaled to a static curve's deepest net (the paper's without one)."""
    if not static:
        return PAPER_BAND
    scale = max(p.mean_macs for p in static) / PAPER_DEEPEST_STATIC_MACS
    return PAPER_BAND[0] * scale, PAPER_BAND[1] * scale


def band_label(band: tuple[float, float]) -> str:
    return f"{band[0] / 1e6:.3g}–{band[1] / 1e6:.3g} M"


def mmacs(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def peak(points: list[CurvePoint]) -> CurvePoint:
    return max(points, key=lambda p: p.accuracy)


def mean_gain(static: list[CurvePoint], dynamic: list[CurvePoint]) -> tuple[float, int] | None:
    """Mean of (static error − dynamic error) over dynamic points inside the static range."""
    gains = []
    for p in dynamic:
        reference = error_at(static, p.mean_macs)
        if reference is not None:
            gains.append(reference - p.error)
    return (float(np.mean(gains)), len(gains)) if gains else None


def mean_gain_standard_error(static: list[CurvePoint], dynamic: list[CurvePoint]) -> float:
    """Standard error of :func:`mean_gain`, treating every accuracy as an independent binomial
    on the dynamic point's test-set size (conservative: nets share one test set); nan when a
    point's test-set size is unknown. A mean gain smaller than this is noise, not a win."""
    variances = []
    for p in dynamic:
        reference = error_at(static, p.mean_macs)
        if reference is not None:
            if p.num_examples <= 0:
                return math.nan
            variances.append((p.error * p.accuracy + reference * (1 - reference)) / p.num_examples)
    return math.sqrt(sum(variances)) / len(variances) if variances else math.nan


def above_noise(difference: float, standard_error: float) -> tuple[bool, str]:
    """Whether ``difference`` exceeds ``standard_error`` (> 0 when that is unknown), and the
    comparison as text for the evidence column."""
    if math.isnan(standard_error):
        return difference > 0, f"{100 * difference:+.2f} points, needs > 0"
    return difference > standard_error, (
        f"{100 * difference:+.2f} points, needs more than its standard error "
        f"±{100 * standard_error:.2f}"
    )


def beats_static(static: list[CurvePoint], dynamic: list[CurvePoint]) -> tuple[bool, str]:
    """Whether the dynamic curve's mean gain over static exceeds its standard error, and the
    rule as evidence text (the mean gain itself is reported by the caller)."""
    gain = mean_gain(static, dynamic)
    if gain is None:
        return False, ""
    se = mean_gain_standard_error(static, dynamic)
    if math.isnan(se):
        return gain[0] > 0, "needs > 0"
    return gain[0] > se, f"needs more than its standard error, ±{100 * se:.2f} points"


def mac_ratio(
    static: list[CurvePoint], dynamic: list[CurvePoint]
) -> tuple[float, float, float] | None:
    """(static MACs, dynamic MACs, ratio) at the static curve's best accuracy."""
    best = peak(static)
    macs = macs_for_accuracy(dynamic, best.accuracy)
    if macs is None:
        return None
    return best.mean_macs, macs, best.mean_macs / macs


def noise_note(points: list[CurvePoint]) -> str:
    """The mean standard error of one accuracy on the curve, as a note for the evidence
    column, so that a reader can weigh the margins beside it (empty when unknown)."""
    points = [p for p in points if p.num_examples]
    if not points:
        return ""
    se = float(np.mean([p.standard_error for p in points]))
    return f"; one accuracy's standard error ±{100 * se:.2f} points"


def on_shared_k_cpt(*curves: list[CurvePoint]) -> tuple[list[list[CurvePoint]], str]:
    """The curves cut to the k_cpt values they all have, and a note saying so.

    A scale may thin a variant to every other k_cpt (``Scale.k_cpt_every``) while the full
    curve keeps all 8. Mean gains and peaks then differ by which budgets they cover, not
    only by the variant (gains are largest at tight budgets; a peak over 8 nets has more
    chances than one over 4), so variants are compared on the budgets both trained. Curves
    without a k_cpt on every point, or with nothing in common, are returned unchanged."""
    if any(p.k_cpt is None for points in curves for p in points):
        return list(curves), ""
    sets = [{p.k_cpt for p in points} for points in curves]
    shared = set.intersection(*sets)
    if not shared or all(values == shared for values in sets):
        return list(curves), ""
    cut = [[p for p in points if p.k_cpt in shared] for points in curves]
    return cut, f"; on the {len(shared)} k_cpt values all of them trained"
