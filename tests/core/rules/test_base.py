"""A new exit rule is one file: the toy rule below, defined in this file alone, is chosen
on the command line, evaluated by the engine, calibrated, tabled against the baselines,
exported and run by the torch-free runtime, which all decide alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import POLICIES, Policy
from dynroute.core.probabilities import softmax
from dynroute.core.rules import RULES, ExitRule, register_rule, unregister_rule


class Margin(ExitRule):
    name = "margin"
    summary = "leave at the first exit whose top-two probability margin is >= the threshold"

    def measure(
        self, state: Any, position: int, history: np.ndarray | None, answer: np.ndarray
    ) -> np.ndarray:
        top2 = np.sort(softmax(answer), axis=1)[:, -2:]
        return (top2[:, 1] - top2[:, 0]).astype(np.float32)


@pytest.fixture
def margin():
    register_rule(Margin)
    yield RULES["margin"]
    unregister_rule("margin")


def test_a_registered_rule_is_a_policy_and_leaves_cleanly(margin) -> None:
    assert "margin" in POLICIES and Policy("margin", 0.2).rule is margin
    with pytest.raises(DynrouteError, match="needs a `threshold` in"):
        Policy("margin", 1.5)
    unregister_rule("margin")
    assert "margin" not in POLICIES
    with pytest.raises(DynrouteError, match="`policy` must be one of"):
        Policy("margin", 0.2)
    register_rule(Margin)


def test_a_rule_without_name_or_summary_is_refused() -> None:
    class Nameless(ExitRule):
        summary = "no name"

    with pytest.raises(DynrouteError, match="needs a `name` and a `summary`"):
        register_rule(Nameless)


def test_the_toy_rule_goes_everywhere(margin, run_copy: Path, tmp_path: Path, capsys) -> None:
    import torch

    from dynroute.deploy import load
    from dynroute.engine.evaluate import evaluate
    from dynroute.nn.prediction import predict_dense
    from dynroute.policies.calibration import calibrate
    from dynroute.policies.exit_table import dense_outputs
    from dynroute.policies.table import budget_table
    from dynroute.runs import open_run

    # the command line offers it, and the engine decides exactly as the dense reference
    assert main(["evaluate", str(run_copy), "--policy", "margin", "--threshold", "0.3",
                 "--json", "--threads", "1"]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    assert stats["policy"]["name"] == "margin"
    run = open_run(run_copy)
    tree = run.load_tree().eval()
    test_images, test_labels, _ = run.split("test")
    images, labels = torch.tensor(test_images), torch.tensor(test_labels)
    policy = Policy("margin", 0.3)
    engine = evaluate(tree, images, labels, method="engine", policy=policy)
    dense = evaluate(tree, images, labels, method="dense", policy=policy)
    assert engine.accuracy == dense.accuracy and engine.mean_macs == dense.mean_macs

    # calibrate fits its family on validation; the policy table puts it beside the others
    record = calibrate(run_copy, target_macs=1.2e6, policy="margin")
    assert record["policy"]["name"] == "margin"
    held_images, held_labels, _ = run.split("validation")
    outputs = dense_outputs(tree, torch.tensor(held_images), torch.tensor(held_labels))
    table = budget_table(tree, outputs, outputs, [1.2e6], routers=False)
    assert "margin/raw" in table["budgets"][0]["policies"]

    # the export carries it; the torch-free runtime decides as PyTorch does
    out = tmp_path / "export"
    assert main(["export", str(run_copy), "--out", str(out), "--check", "32"]) == 0
    model = load(out)
    assert model.policy["name"] == "margin"
    ours = model.predict(images[:40].numpy())
    reference = predict_dense(tree, images[:40], policy=Policy.from_dict(model.policy))
    np.testing.assert_array_equal(ours.exits, reference.exits.numpy())
