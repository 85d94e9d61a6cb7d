"""Paired tests, Holm's correction and packed per-example correctness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynroute.policies.statistics import holm, mcnemar, pack_bits, unpack_bits


def test_mcnemar_exact() -> None:
    first = np.array([True] * 10 + [False] * 2 + [True] * 50)
    second = np.array([False] * 10 + [True] * 2 + [True] * 50)
    result = mcnemar(first, second)
    assert (result["only_first"], result["only_second"]) == (10, 2)
    expected = 2 * sum(math.comb(12, i) for i in range(3)) / 2**12
    assert result["p_value"] == pytest.approx(expected)
    assert result["accuracy_difference"] == pytest.approx(8 / 62)
    assert mcnemar(first, first)["p_value"] == 1.0


def test_holm_steps_down_and_stops_at_the_first_failure() -> None:
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.001, 0.012, 0.02, 0.04]) == [True, True, True, True]
    assert holm([0.03, 0.03]) == [False, False]  # 0.03 > 0.05 / 2 at the first step
    assert holm([0.02, 0.02]) == [True, True]
    assert holm([]) == []
    # never more than a plain test at alpha, never fewer than Bonferroni
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.1, 7).tolist()
        rejected = holm(p)
        assert all(q < 0.05 for q, r in zip(p, rejected, strict=False) if r)
        assert all(r for q, r in zip(p, rejected, strict=False) if q <= 0.05 / 7)


def test_bits_round_trip() -> None:
    values = np.random.default_rng(1).random(77) > 0.5
    assert (unpack_bits(pack_bits(values), 77) == values).all()
