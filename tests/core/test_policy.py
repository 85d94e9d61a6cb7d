"""A policy read from a file: any malformed value is one ``DynrouteError``, never a
TypeError from deep inside."""

from __future__ import annotations

import pytest

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy

MALFORMED = [
    "not an object",
    {"name": ["confidence"]},
    {"name": 5},
    {"name": "confidence", "threshold": "0.5"},
    {"name": "confidence", "threshold": True},
    {"name": "budgeted", "thresholds": 5},
    {"name": "budgeted", "thresholds": [[0.5]]},
    {"name": "budgeted", "thresholds": {"a": 1}},
    {"name": "confidence", "threshold": 0.5, "answers": ["raw"]},
    {"name": "confidence", "threshold": 0.5, "answers": "calibrated", "weights": [[1]],
     "biases": 5},
    {"name": "confidence", "threshold": 0.5, "answers": "calibrated", "weights": 5,
     "biases": [[0]]},
    {"name": "confidence", "threshold": 0.5, "answers": "combined", "weights": [[None, 1]],
     "biases": [[0, 0]]},
    {"name": "scheduler", "threshold": 0.0, "scheduler": {"exits": [{"mean": "x"}]}},
    {"name": "scheduler", "threshold": 0.0, "scheduler": {"exits": [5]}},
    {"name": "scheduler", "threshold": 0.0, "scheduler": {"exits": 5}},
    {"name": "confidence", "threshold": 0.5, "colour": "red"},
]  # fmt: skip


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_policy_is_one_error(data) -> None:
    with pytest.raises(DynrouteError):
        Policy.from_dict(data)


def test_a_policy_reads_back_what_it_wrote() -> None:
    policy = Policy("budgeted", thresholds=(0.5, 0.7, 2.0), answers="calibrated",
                    weights=((1.0,), (0.0, 1.2), (0.0, 0.0, 0.9)),
                    biases=((0.1, -0.1),) * 3)  # fmt: skip
    assert Policy.from_dict(policy.to_dict()) == policy
