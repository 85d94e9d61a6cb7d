"""``dynroute.selection``: the budget rule shared by calibrate and exports, and the
thinning that keeps an export's operating points small."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dynroute.errors import DynrouteError
from dynroute.selection import choose, thin


@dataclass
class Point:
    mean_macs: float
    accuracy: float
    rule: str = "one"


def family(point: Point) -> str:
    return point.rule


def test_a_budget_spends_most_of_itself_in_each_family_then_takes_the_most_accurate() -> None:
    points = [Point(1e6, 0.5), Point(2e6, 0.7), Point(3e6, 0.9), Point(2.5e6, 0.8, "two")]
    assert choose(points, 2.6e6, None, family) == Point(2.5e6, 0.8, "two")
    assert choose(points, 3e6, None, family) == Point(3e6, 0.9)
    # one family: the dearest point within the budget, even if a cheaper one is as good
    assert choose([Point(1e6, 0.9), Point(2e6, 0.9)], 2.2e6, None) == Point(2e6, 0.9)
    assert choose(points, None, 0.75, family) == Point(2.5e6, 0.8, "two")
    with pytest.raises(DynrouteError, match=r"within 0.500 M MACs; reachable: 1.000 to 3.000 M"):
        choose(points, 0.5e6, None, family)
    with pytest.raises(DynrouteError, match="no operating point reaches accuracy"):
        choose(points, None, 0.95, family)
    with pytest.raises(DynrouteError, match="exactly one"):
        choose(points, 1.0, 0.5, family)
    with pytest.raises(DynrouteError, match="no operating point to choose"):
        choose([], 1.0, None, family)


def test_thinning_keeps_each_family_spread_and_its_choices_close() -> None:
    rng = np.random.default_rng(0)
    macs = np.sort(rng.uniform(1e6, 15e6, 3000))
    accuracy = 0.6 + 0.3 * (macs - 1e6) / 14e6 + rng.normal(0, 0.01, macs.size)
    points = [Point(float(m), float(a), "one") for m, a in zip(macs, accuracy, strict=True)]
    points += [Point(5e6, 0.5, "one"), Point(5e6, 0.99, "one")]  # equal MACs: keep the better
    points += [Point(float(m), 0.7, "two") for m in np.linspace(2e6, 3e6, 50)]
    kept = thin(points, 200, family)
    ones = [p for p in kept if p.rule == "one"]
    assert len(ones) <= 201 and len([p for p in kept if p.rule == "two"]) == 50
    assert min(p.mean_macs for p in ones) == macs[0] and max(p.mean_macs for p in ones) == macs[-1]
    assert Point(5e6, 0.5, "one") not in kept
    step = (macs[-1] - macs[0]) / 199
    for target in np.linspace(1.5e6, 15e6, 40):
        full, thinned = choose(points, target, None, family), choose(kept, target, None, family)
        assert thinned.mean_macs <= target
        if full.rule == thinned.rule == "one":
            assert full.mean_macs - thinned.mean_macs <= step
