"""Comparing curves: the comparison band and the budgets two curves share."""

from __future__ import annotations

from dynroute.experiments.claims.curves import (
    PAPER_BAND,
    PAPER_DEEPEST_STATIC_MACS,
    band_for,
    mac_ratio,
    noise_note,
    on_shared_k_cpt,
)
from dynroute.policies.curves import CurvePoint


def test_the_band_is_the_papers_fractions_of_the_deepest_static_net() -> None:
    assert band_for([]) == PAPER_BAND
    static = [CurvePoint("s", "static-1", None, 2 * PAPER_DEEPEST_STATIC_MACS, 0.9)]
    assert band_for(static) == (2 * PAPER_BAND[0], 2 * PAPER_BAND[1])


def test_mac_ratio_at_the_static_peak_and_its_noise() -> None:
    static = [
        CurvePoint("s", "static-1", None, 2e6, 0.7),
        CurvePoint("s", "static-2", None, 4e6, 0.8),
    ]
    dynamic = [CurvePoint("d", "k0", 0.0, 1e6, 0.75), CurvePoint("d", "k1", 1.0, 2e6, 0.85)]
    static_macs, dynamic_macs, ratio = mac_ratio(static, dynamic)
    assert static_macs == 4e6 and 1e6 < dynamic_macs < 2e6 and ratio > 2
    assert mac_ratio(dynamic, static) is None  # static never reaches 0.85
    assert noise_note(static) == ""  # no test-set size: no noise to state


def test_on_shared_k_cpt_cuts_to_the_budgets_every_curve_has() -> None:
    full = [CurvePoint("a", f"k{k}", k, 1e6 * (i + 1), 0.9) for i, k in enumerate((0, 1, 2, 3))]
    half = [CurvePoint("b", f"k{k}", k, 1e6 * (i + 1), 0.8) for i, k in enumerate((0, 2))]
    (cut_full, cut_half), note = on_shared_k_cpt(full, half)
    assert [p.k_cpt for p in cut_full] == [0, 2] and cut_half == half
    assert note == "; on the 2 k_cpt values all of them trained"
    assert on_shared_k_cpt(full, full) == ([full, full], "")  # nothing to cut
    static = [CurvePoint("s", "static-1", None, 1e6, 0.7)]
    assert on_shared_k_cpt(static, half) == ([static, half], "")  # no budget to match
