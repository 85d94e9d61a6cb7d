"""The operating-point request: checked once, read from parsed options, and resolved alike
by a run and an export."""

from __future__ import annotations

import argparse

import pytest

from dynroute.commands.common import add_operating_point_arguments
from dynroute.core.errors import DynrouteError
from dynroute.core.operating import OperatingRequest, chosen_for_budget
from dynroute.core.policy import Policy


def test_a_request_is_checked_once_with_one_message() -> None:
    with pytest.raises(DynrouteError, match="give `threshold` or `target_macs`, not both"):
        OperatingRequest("confidence", threshold=0.5, target_macs=2e6)
    with pytest.raises(DynrouteError, match="`target_macs` must be a positive number"):
        OperatingRequest(target_macs=-1)
    with pytest.raises(DynrouteError, match="`k_cpt` must be a finite number in"):
        OperatingRequest(k_cpt=float("nan"))
    with pytest.raises(DynrouteError, match="`policy` must be one of"):
        OperatingRequest("fastest")
    with pytest.raises(DynrouteError, match="`answers` must be one of"):
        OperatingRequest("confidence", answers="cooked")
    with pytest.raises(DynrouteError, match="the best policy is chosen for a budget"):
        OperatingRequest("best")
    assert OperatingRequest(k_cpt=0.0).k_cpt == 0.0


def test_the_command_line_parses_a_budget_once_in_macs() -> None:
    parser = argparse.ArgumentParser()
    add_operating_point_arguments(parser, "the run's own")
    args = parser.parse_args(["--policy", "entropy", "--target-macs", "2.5"])
    request = OperatingRequest.from_options(args)
    assert request.target_macs == pytest.approx(2.5e6) and request.policy == "entropy"
    assert request.options() == {
        "policy": "entropy", "threshold": None, "target_macs": pytest.approx(2.5e6),
        "k_cpt": None, "answers": None,
    }  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["--target-macs", "0"])


def test_a_request_applies_to_a_policy_as_the_resolver_does() -> None:
    current = Policy("confidence", 0.4)
    assert OperatingRequest().applied_to(current) is current
    assert OperatingRequest(threshold=0.7).applied_to(current) == Policy("confidence", 0.7)
    assert OperatingRequest("entropy", 0.2).applied_to(current) == Policy("entropy", 0.2)


def test_a_point_chosen_for_a_budget_is_described_the_same_everywhere() -> None:
    class Point:
        policy, accuracy, mean_macs = Policy("confidence", 0.5), 0.91234, 2.2e6

    text = chosen_for_budget(2.5e6, Point())
    assert text == (
        "confidence 0.5 chosen for 2.5 M MACs on the validation split "
        "(accuracy 0.9123 at 2.200 M there)"
    )
