"""``dynroute train``: options from the config's fields, and defaults that follow the model."""

from __future__ import annotations

from dynroute.cli import build_parser
from dynroute.commands.train import config_from_args


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(["train", "--out", "x", *argv]))


def test_a_static_model_trains_as_static_without_being_told() -> None:
    assert _config("--model", "static-8").strategy == "static"
    assert _config().strategy == "actor"
    assert _config("--strategy", "critic").strategy == "critic"


def test_the_largest_seed_the_help_names_is_accepted() -> None:
    assert _config("--seed", str(2**63 - 1)).validate().seed == 2**63 - 1
