"""The options several commands share: each refuses a bad value the same way everywhere."""

from __future__ import annotations

import pytest

from dynroute.cli import build_parser

RUN = "some/run"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", RUN, "--k-cpt", "nan"],
        ["calibrate", RUN, "--k-cpt", "inf", "--target-macs", "3"],
        ["export", RUN, "--out", "x", "--k-cpt", "-5"],
        ["predict", RUN, "x.png", "--k-cpt", "1e300"],
        ["serve", RUN, "--k-cpt", "2"],
        ["predict", RUN, "x.png", "--target-macs", "0"],
        ["serve", RUN, "--target-macs", "inf"],
        ["predict", RUN, "x.png", "--batch-size", "1000000000"],
        ["serve", RUN, "--header-timeout", "0"],
    ],
)
def test_every_command_refuses_the_same_bad_values(argv, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "export", "predict", "serve"])
def test_the_checksum_option_reaches_every_command_that_reads_a_run(command) -> None:
    extra = {"export": ["--out", "x"], "predict": ["x.png"], "calibrate": ["--target-macs", "3"]}
    args = build_parser().parse_args(
        [command, RUN, *extra.get(command, []), "--allow-checksum-mismatch"]
    )
    assert args.allow_checksum_mismatch is True
