"""Accuracy-MAC curves read through their frontier."""

from __future__ import annotations

import pytest

from dynroute.policies.curves import accuracy_at, as_points, macs_for_accuracy


def test_frontier_interpolates_and_refuses_the_unreachable() -> None:
    rows = [{"accuracy": 0.5, "mean_macs": 10.0}, {"accuracy": 0.9, "mean_macs": 30.0}]
    points = as_points([*rows, {"accuracy": 0.6, "mean_macs": 40.0}])  # below the frontier
    assert macs_for_accuracy(points, 0.7) == pytest.approx(20.0)
    assert macs_for_accuracy(points, 0.4) == pytest.approx(10.0)
    assert macs_for_accuracy(points, 0.95) is None
    assert accuracy_at(points, 20.0) == pytest.approx(0.7)
    assert accuracy_at(points, 40.0) == pytest.approx(0.9)  # a worse dearer point lowers nothing
    assert accuracy_at(points, 5.0) is None
