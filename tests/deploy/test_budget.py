"""A budget held online (``BudgetHold``): on inputs that spend more (or less) than the
validation split did, the mean MACs of the last examples come back within 5 % of the budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from dynroute.core.errors import DynrouteError
from dynroute.deploy.budget import BudgetHold


@dataclass
class _Prediction:
    macs: np.ndarray

    def __len__(self) -> int:
        return len(self.macs)


class _Model:
    """An export stand-in: operating points whose spending is their validation cost times a
    drift factor the test sets (the images changed), with some noise."""

    dynamic_k_cpt = False
    k_cpt = None

    def __init__(self, drift: list[float]) -> None:
        self.drift = drift
        macs = np.linspace(1e6, 20e6, 60)
        self.manifest = {
            "policy": {"name": "confidence", "threshold": 0.5},
            "operating_points": {
                "points": [
                    {"policy": {"name": "confidence", "threshold": float(t)},
                     "mean_macs": float(m), "accuracy": 0.5 + 0.02 * k ** 0.5}
                    for k, (t, m) in enumerate(zip(np.linspace(0, 1, 60), macs, strict=True))
                ]
            },
        }  # fmt: skip
        self.point_macs = 5e6
        self.rng = np.random.default_rng(0)

    def with_policy(self, policy: dict, k_cpt=None) -> _Model:
        chosen = next(
            p for p in self.manifest["operating_points"]["points"] if p["policy"] == policy
        )
        other = object.__new__(_Model)
        other.__dict__.update(self.__dict__)
        other.point_macs = chosen["mean_macs"]
        return other

    def predict(self, x: np.ndarray) -> _Prediction:
        factor = self.drift[0]
        noise = self.rng.normal(1.0, 0.2, len(x))
        return _Prediction(np.maximum(0, self.point_macs * factor * noise))


@pytest.mark.parametrize("factor", [2.0, 1.5, 0.6])
def test_the_budget_holds_when_the_inputs_drift(monkeypatch, factor: float) -> None:
    import dynroute.deploy.manifest as manifest

    monkeypatch.setattr(manifest, "operating_points", lambda m: m["operating_points"]["points"])
    drift = [1.0]
    model = _Model(drift)
    hold = BudgetHold(model, 6e6, window=512)
    x = np.zeros((32, 3, 4, 4), np.float32)
    for _ in range(40):  # like validation: on budget
        hold.predict(x)
    assert abs(hold.state()["window_mean_macs"] / 6e6 - 1) < 0.05
    drift[0] = factor  # the inputs change: the same point now spends factor times more
    for _ in range(60):
        hold.predict(x)
    state = hold.state()
    assert abs(state["window_mean_macs"] / 6e6 - 1) < 0.05, state
    assert state["drift_ratio"] == pytest.approx(factor, rel=0.1) and state["moves"] >= 1


def test_a_hold_needs_operating_points() -> None:
    class Bare:
        manifest = {"policy": {"name": "learned"}, "operating_points": None}

    with pytest.raises(DynrouteError, match="operating points"):
        BudgetHold(Bare(), 5e6)
