"""``dynroute model list`` and ``dynroute model summary``, and the custom-tree example."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from dynroute.cli import main
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.macs import tree_costs
from dynroute.nn.prediction import predict_dense
from helpers.routing import scramble_routing

EXAMPLE = Path(__file__).parents[2] / "examples" / "custom_resnet_tree.py"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as stop:  # refused by the parser
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def path_macs(out: str) -> list[float]:
    return [float(m) for m in re.findall(r"(\d+\.\d+) M$", out, flags=re.MULTILINE)]


def test_list(capsys) -> None:
    status, out, _ = run(capsys, "model", "list")
    assert status == 0
    backbones = [
        name
        for backbone in ("resnet18", "mobilenet-v3-small")
        for name in [f"{backbone}-exits"] + [f"{backbone}-static-{n}" for n in range(1, 5)]
    ]
    assert out.split() == ["chain", "tree"] + [f"static-{n}" for n in range(1, 9)] + backbones


def test_summary_chain(capsys) -> None:
    status, out, _ = run(capsys, "model", "summary", "chain")
    assert status == 0
    assert path_macs(out) == [1.37, 5.28, 7.58, 11.42, 13.51, 17.06, 18.28, 20.64]
    assert "column nodes: 8, exits: 8, parameters: 680,798" in out
    assert "\n      column4 (router)" in out  # indented by depth
    assert "FLOP" not in out


@pytest.mark.slow
def test_summary_static_and_tree(capsys) -> None:
    _, out, _ = run(capsys, "model", "summary", "static-8")
    assert path_macs(out) == [20.55]
    _, out, _ = run(capsys, "model", "summary", "tree", "--num-classes", "2", "--dynamic-k-cpt")
    assert "column nodes: 47, exits: 47" in out and "dynamic k_cpt on" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown model 'nope'"),
        (["static-8", "--dynamic-k-cpt"], "dynamic k_cpt does not apply"),
        (["chain", "--width", "0"], "--width: must be an integer >= 1 and <= 16, got 0"),
    ],
)
def test_summary_errors(capsys, argv: list[str], message: str) -> None:
    status, _, err = run(capsys, "model", "summary", *argv)
    assert status == 2 and message in err


@pytest.mark.slow
def test_custom_resnet_example() -> None:
    spec = importlib.util.spec_from_file_location("custom_resnet_tree", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    tree = example.build_resnet_tree(num_classes=4)
    assert [round(tree_costs(tree).path_macs[leaf] / 1e6, 2) for leaf in tree.leaves] == [
        5.16,
        8.84,
        12.51,
    ]
    x = torch.rand(32, 3, 32, 32) * torch.rand(32, 1, 1, 1)
    tree = scramble_routing(tree, x)
    result, dense = EarlyExitEngine(tree)(x), predict_dense(tree, x)
    assert torch.equal(result.exits, dense.exits) and torch.equal(result.macs, dense.macs)
    torch.testing.assert_close(result.logits, dense.logits, rtol=1e-4, atol=1e-4)


def test_the_registry_refuses_a_second_builder_under_a_name() -> None:
    import dynroute
    from dynroute.core.errors import DynrouteError

    register_model = dynroute.register_model  # the public one: built-ins registered first
    with pytest.raises(DynrouteError, match="already registered"):
        register_model("chain")(lambda num_classes, width=1, dynamic_k_cpt=False: None)
    with pytest.raises(DynrouteError, match="other than 'custom'"):
        register_model("custom")
