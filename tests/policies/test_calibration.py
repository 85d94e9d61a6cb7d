"""``calibrate``: the operating point that meets a target, chosen on validation; with
``delta``, one that meets it with a guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy
from dynroute.policies.calibration import calibrate, families


def test_families_name_what_a_policy_chooses_among() -> None:
    assert families("ensemble") == [("confidence", "combined"), ("budgeted", "combined")]
    assert families("confidence") == [("confidence", "raw")]
    assert families("scheduler") == [("scheduler", k) for k in ("raw", "calibrated", "combined")]
    assert ("learned", "raw") in families("best") and ("entropy", "calibrated") in families("best")
    with pytest.raises(DynrouteError, match="labels"):
        families("oracle")


def test_a_budget_takes_the_most_accurate_point_within_it(run_copy: Path, capsys) -> None:
    record = calibrate(run_copy, target_macs=1.2e6, policy="best")
    assert record["validation"]["mean_macs"] <= 1.2e6
    assert record["guarantee"] is None
    saved = json.loads((run_copy / "calibration.json").read_text())
    assert Policy.from_dict(saved["policy"]) == Policy.from_dict(record["policy"])
    with pytest.raises(DynrouteError, match="exactly one of"):
        calibrate(run_copy, target_macs=1e6, target_accuracy=0.5)


def test_a_guaranteed_target_says_how_it_holds(run_copy: Path, capsys) -> None:
    record = calibrate(run_copy, target_accuracy=0.3, delta=0.2, policy="confidence")
    guarantee = record["guarantee"]
    assert guarantee["target"] == "accuracy" and guarantee["delta"] == 0.2
    assert guarantee["bound"] >= 0.3 and guarantee["n"] == 30 and guarantee["fit_examples"] == 30
    assert "Learn-then-Test" in guarantee["method"]
    assert guarantee["policy"] == record["policy"]
    # agreement with the full network is only ever promised with a guarantee
    record = calibrate(run_copy, max_disagreement=0.9, policy="confidence")
    assert record["guarantee"]["target"] == "disagreement" and record["guarantee"]["delta"] == 0.1
    capsys.readouterr()
    assert main(["calibrate", str(run_copy), "--target-accuracy", "0.999", "--delta", "0.1",
                 "--policy", "confidence"]) == 2  # fmt: skip
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no operating point can guarantee accuracy >= 0.999" in line


def test_one_family_fitted_on_two_samples_replays_on_its_own_answers() -> None:
    """The guarantee study fits calibrated answers on each method's own sample: a family
    fitted twice must replay each member on the answers it was fitted with (it used to
    replay the second on the first's table and fail)."""
    import numpy as np

    from dynroute.nn.models import build_model
    from dynroute.policies.calibration import candidates, positions_on, table_key
    from helpers.outputs import chain_outputs

    tree = build_model("chain", num_classes=4).eval()
    unseen = chain_outputs(300, 3)
    first = candidates(0, tree, chain_outputs(400, 1), [("confidence", "calibrated")])
    second = candidates(0, tree, chain_outputs(400, 2), [("confidence", "calibrated")])
    assert table_key(first[0]) != table_key(second[0])
    tables: dict = {}
    for candidate in (first[len(first) // 2], second[len(second) // 2]):
        positions = positions_on(tree, unseen, candidate, None, tables)
        assert positions.shape == (300,) and np.all(positions >= 0)
    assert len(tables) == 2
