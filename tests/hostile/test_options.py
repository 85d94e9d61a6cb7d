"""Bad option values are refused in one line, by the parser where they can be."""

from __future__ import annotations

import argparse
import re

import pytest

from dynroute.cli import build_parser, main
from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from helpers.hostile import (
    SWEEP,
    refused,
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "hybrid", "--out", "x", "--iterations", "0"], "--iterations must"),
        (["train", "--dataset", "hybrid", "--out", "x", "--lr", "nan"], "--lr must be"),
        (["train", "--dataset", "csv:x", "--out", "x"], "unknown dataset prefix 'csv:'"),
        (["evaluate", "RUN", "--policy", "confidence", "--threshold", "2"], "--threshold"),
    ],
)
def test_bad_option_values_are_refused_in_one_line(workspace, capsys, argv, message):
    argv = [str(workspace / "routed") if a == "RUN" else a for a in argv]
    assert message in refused(capsys, *argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "RUN", "--k-cpt", "inf"],
        ["evaluate", "RUN", "--k-cpt", "-1"],
        ["calibrate", "RUN", "--k-cpt", "nan", "--target-macs", "3"],
        ["calibrate", "RUN", "--target-accuracy", "1.5"],
        ["export", "RUN", "--out", "x", "--k-cpt", "-5"],
        ["predict", "RUN", "x.png", "--k-cpt", "1e300"],
        ["serve", "RUN", "--target-macs", "nan"],
        ["train", "--out", "x", "--threads", "0"],
    ],
)
def test_bad_values_are_refused_by_the_parser(workspace, capsys, argv):
    argv = [str(workspace / "routed") if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("dynroute ")
    assert "Traceback" not in err


# ------------------------------------------------------------------ every option has a range
#: (argv, the option, its range as the refusal says it): one bad value per numeric option
#: of every command but serve (its own tests) and train (``TrainConfig``'s ``Bounds``).
OUT_OF_RANGE = [
    (["predict", "RUN", "x.png", "--readers", "100000"], "--readers", "an integer >= 1 and <= 64"),
    (["predict", "RUN", "x.png", "--readers", "0"], "--readers", "an integer >= 1 and <= 64"),
    (["predict", "RUN", "x.png", "--batch-size", "0"], "--batch-size", "an integer >= 1"),
    (["predict", "RUN", "x.png", "--threads", "100000"], "--threads", "<= 4096"),
    (["export", "RUN", "--out", "x", "--check", "-1"], "--check", "an integer >= 0"),
    (["export", "RUN", "--out", "x", "--check", "1e9"], "--check", "expected an integer"),
    (["sweep", *SWEEP, "--workers", "0"], "--workers", "an integer >= 1 and <= 256"),
    (["sweep", *SWEEP, "--workers", "100000"], "--workers", "an integer >= 1 and <= 256"),
    (["sweep", *SWEEP, "--seed", "-1"], "--seed", "<= 9223372036854775807"),
    (["sweep", *SWEEP, "--validation-size", "-5"], "--validation-size", "an integer >= 0"),
    (["data", "info", "hybrid", "--validation-size", "-1"], "--validation-size", ">= 0"),
    (["data", "info", "hybrid", "--seed", "1.5"], "--seed", "expected an integer"),
    (["data", "info", "hybrid", "--test-fraction", "1"], "--test-fraction", "> 0 and < 1"),
    (["data", "info", "hybrid", "--image-size", "100000"], "--image-size", "an integer >= "),
    (["model", "summary", "chain", "--width", "0"], "--width", "an integer >= 1"),
    (["model", "summary", "chain", "--num-classes", "1"], "--num-classes", "an integer >= 2"),
    (["calibrate", "RUN", "--target-accuracy", "0"], "--target-accuracy", "> 0 and <= 1"),
    (["calibrate", "RUN", "--max-disagreement", "1"], "--max-disagreement", "> 0 and < 1"),
    (["calibrate", "RUN", "--target-macs", "3", "--delta", "0"], "--delta", "> 0 and < 1"),
    (["calibrate", "RUN", "--target-macs", "3", "--delta", "nan"], "--delta", "> 0 and < 1"),
    (["calibrate", "RUN", "--target-macs", "1e300"], "--target-macs", "up to 1e+15"),
    (["policies", "RUN", "--budgets", "1,-2"], "--budgets", "> 0"),
    (["study", "guarantees", "RUN", "--targets", "0.9,1"], "--targets", "> 0 and < 1"),
    (["study", "guarantees", "RUN", "--partitions", "0"], "--partitions", "an integer >= 1"),
    (["study", "guarantees", "RUN", "--calibration-size", "1"], "--calibration-size", ">= 2"),
]


@pytest.mark.parametrize(("argv", "flag", "allowed"), OUT_OF_RANGE)
def test_a_value_out_of_range_is_one_line_naming_the_option_range_and_why(
    capsys, argv, flag, allowed
):
    """Refused by the parser, before any work starts: the command, the option, its range
    and, for a number out of range, why the range is what it is."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"dynroute {argv[0]}") and f"argument {flag}: " in line, line
    assert allowed in line, line
    if "must be" in line:  # a number out of its range says why: "..., got X: because"
        assert re.search(r", got [^ ]+: \w", line), line


def _numeric_options(parser, path=()):
    """(command, flag, type) of every option of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _numeric_options(child, (*path, name))
        elif action.option_strings:
            yield " ".join(path), max(action.option_strings, key=len), action.type


def test_no_numeric_option_is_parsed_without_a_range():
    """``type=int`` or ``type=float`` accepts any size (``--readers 100000``): every numeric
    option is parsed by a range check (``dynroute.commands.common.ranged`` and kin)."""
    unranged = [
        (command, flag)
        for command, flag, kind in _numeric_options(build_parser())
        if command not in ("train", "serve")  # train: TrainConfig's Bounds; serve: its own
        and (kind in (int, float) or getattr(kind, "__name__", "") == "<lambda>")
    ]
    assert not unranged


def test_every_numeric_training_option_has_bounds():
    from dataclasses import fields

    from dynroute.train.config import TrainConfig

    for field in fields(TrainConfig):
        numeric = field.metadata["kind"] in (int, float) or type(field.default) in (int, float)
        if numeric and not isinstance(field.default, bool):
            assert field.metadata["bounds"] is not None, field.name


def test_the_library_and_the_parser_give_one_message(capsys):
    """``checks.in_range`` (the library) and ``ranged`` (the parser) say the same."""
    with pytest.raises(DynrouteError) as refused_here:
        checks.in_range(100000, "readers", checks.READERS)
    with pytest.raises(SystemExit):
        main(["predict", "RUN", "x.png", "--readers", "100000"])
    parser_line = capsys.readouterr().err.strip().splitlines()[-1]
    library = str(refused_here.value)
    assert library.startswith("`readers` must be an integer >= 1 and <= 64, got 100000: ")
    assert parser_line.endswith(library.removeprefix("`readers` "))
    with pytest.raises(DynrouteError, match="`readers` must be an integer"):
        checks.in_range(True, "readers", checks.READERS)  # a bool is no count
    assert checks.in_range(4, "readers", checks.READERS) == 4


def test_the_readers_default_fits_the_machine(monkeypatch):
    import dynroute.platform.machine

    monkeypatch.setattr(dynroute.platform.machine, "available_cores", lambda: 1)
    args = build_parser().parse_args(["predict", "RUN", "x.png"])
    assert args.readers == 1


@pytest.mark.parametrize(
    ("variable", "argv"),
    [
        ("DYNROUTE_DATA", ["data", "info"]),
        ("DYNROUTE_CACHE", ["data", "info"]),
        ("XDG_CACHE_HOME", ["data", "info"]),
        (None, ["data", "info", "--data-dir", "~nouser/x"]),
        (None, ["data", "info", "npz:~nouser/x.npz"]),
        (None, ["train", "--out", "never", "--pretrained-weights", "~nouser/x"]),
    ],
)
def test_a_home_folder_of_no_user_is_one_line(monkeypatch, capsys, variable, argv):
    """``~nouser/x`` (a user without a home folder) in a variable, an option or a dataset
    name: one line naming where it came from, not pathlib's RuntimeError."""
    for name in ("DYNROUTE_DATA", "DYNROUTE_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, "~nouser/x")
    line = refused(capsys, *argv)
    assert "'~nouser'" in line and "no such user or home folder" in line
    assert (variable or "~nouser/x") in line


@pytest.mark.parametrize(
    "options",
    [{"batch_size": 0}, {"batch_size": 10**9}, {"batch_size": True}, {"workers": 0},
     {"workers": 10**6}],
)  # fmt: skip
def test_the_library_reader_checks_its_ranges_as_the_command_line_does(options) -> None:
    """``dynroute.data.files.batches`` (what ``predict`` reads with) refuses what
    ``--batch-size`` and ``--readers`` refuse, with the same ranges, before reading."""
    from dynroute.data.files import batches

    with pytest.raises(DynrouteError, match="must be an integer >= 1 and <="):
        next(batches([], 32, **{"batch_size": 4, **options}))
