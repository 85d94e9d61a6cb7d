"""``dynroute.core.selection``: the one rule that picks an operating point for a target, and the
frontier an export stores so it chooses every target as its run does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dynroute.core.errors import DynrouteError
from dynroute.core.selection import choose, frontier, reaching, within_budget


@dataclass
class Point:
    mean_macs: float
    accuracy: float
    name: str = ""


def test_a_budget_takes_the_most_accurate_point_within_it() -> None:
    points = [Point(1e6, 0.5), Point(2e6, 0.7), Point(3e6, 0.9), Point(2.5e6, 0.8)]
    assert choose(points, 2.6e6, None) == Point(2.5e6, 0.8)
    assert choose(points, 3e6, None) == Point(3e6, 0.9)
    # a cheaper point that is more accurate beats one spending more of the budget
    overfit = [Point(1e6, 0.9, "shallow"), Point(2e6, 0.8, "deep")]
    assert choose(overfit, 2.2e6, None).name == "shallow"
    # equally accurate: the dearer one (nothing says the cheaper is better); then the first
    assert choose([Point(1e6, 0.9), Point(2e6, 0.9)], 2.2e6, None) == Point(2e6, 0.9)
    twins = [Point(1e6, 0.9, "a"), Point(1e6, 0.9, "b")]
    assert choose(twins, 2e6, None).name == "a"
    assert within_budget(points, 0.5e6) is None


def test_an_accuracy_target_takes_the_cheapest_point_reaching_it() -> None:
    points = [Point(1e6, 0.5), Point(2e6, 0.8), Point(3e6, 0.9), Point(2e6, 0.85)]
    assert choose(points, None, 0.75) == Point(2e6, 0.85)
    assert reaching(points, 0.95) is None


def test_unreachable_targets_name_what_is_reachable() -> None:
    points = [Point(1e6, 0.5), Point(3e6, 0.9)]
    with pytest.raises(DynrouteError, match=r"within 0.500 M MACs; reachable: 1.000 to 3.000 M"):
        choose(points, 0.5e6, None)
    with pytest.raises(DynrouteError, match="no operating point reaches accuracy"):
        choose(points, None, 0.95)
    with pytest.raises(DynrouteError, match="exactly one"):
        choose(points, 1.0, 0.5)
    with pytest.raises(DynrouteError, match="no operating point to choose"):
        choose([], 1.0, None)


def test_the_frontier_chooses_every_target_as_all_points_do() -> None:
    rng = np.random.default_rng(0)
    macs = rng.uniform(1e6, 15e6, 3000)
    # accuracy rises with MACs, with plateaus (a finite split's accuracies repeat) and noise
    accuracy = np.round(0.6 + 0.3 * (macs - 1e6) / 14e6 + rng.normal(0, 0.02, macs.size), 3)
    points = [
        Point(float(m), float(a), str(i))
        for i, (m, a) in enumerate(zip(macs, accuracy, strict=False))
    ]
    points += [Point(5e6, 0.5, "worse twin"), Point(5e6, 0.99, "better twin")]
    kept = frontier(points)
    assert len(kept) < len(points) / 4
    assert Point(5e6, 0.5, "worse twin") not in kept
    assert [p for p in points if p in kept] == kept  # the given order is kept
    for target in np.linspace(0.9e6, 16e6, 300):
        if within_budget(points, target) is not None:
            assert choose(kept, target, None) is choose(points, target, None)
    for target in np.linspace(0.5, 1.0, 300):
        if reaching(points, target) is not None:
            assert choose(kept, None, target) is choose(points, None, target)
