"""Bad option values are refused in one line, by the parser where they can be."""

from __future__ import annotations

import pytest

from dynroute.cli import main
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
        (["sweep", *SWEEP, "--workers", "0"], "--workers must be at least 1"),
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
