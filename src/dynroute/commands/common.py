"""Arguments that several commands share, defined once: data folders, threads, k_cpt,
operating points, sizes. Each parses and range-checks its value, so every command that
takes an option refuses the same bad values with the same message."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynroute import checks
from dynroute.data.sources import DATA_DIR_ENV
from dynroute.errors import DynrouteError

#: More threads than this is a typo, not a machine.
MAX_THREADS = 4096
#: Policy names the operating-point options accept (``best``: chosen among every policy).
OPERATING_POLICIES = (
    "learned",
    "confidence",
    "entropy",
    "budgeted",
    "scheduler",
    "ensemble",
    "best",
)
ANSWER_CHOICES = ("raw", "calibrated", "combined", "any")


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, shared by every command that reads the raw datasets."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder with the raw MNIST/CIFAR-10 files (default: ${DATA_DIR_ENV}, "
        "else ~/.cache/dynroute); may be read-only",
    )


def add_checksum_argument(parser: argparse.ArgumentParser) -> None:
    """``--allow-checksum-mismatch``, for deliberately using a non-official copy."""
    parser.add_argument(
        "--allow-checksum-mismatch",
        action="store_true",
        help="use raw files whose MD5 differs from the official release "
        "(recorded in the dataset manifest)",
    )


def _checked(text: str, check: Callable[[float], Any]) -> float:
    """``text`` as a number that passes ``check`` (a ``dynroute.checks`` function), with
    the same message the library gives."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        check(value)
    except DynrouteError as exc:  # "`k_cpt` must be ...": argparse names the flag itself
        raise argparse.ArgumentTypeError(re.sub(r"^`\w+` ", "", str(exc))) from None
    return value


def k_cpt_value(text: str) -> float:
    """A ``--k-cpt`` value: a finite number in [0, 1] (the price of one MAC)."""
    return _checked(text, checks.k_cpt)


def threads_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS}, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=None,
        help="CPU threads for torch (default: every available core; use 1 per process "
        "when several jobs share the machine)",
    )


#: The largest batch a command decodes and runs at once (more only holds more in memory).
MAX_BATCH = 4096


def batch_size(text: str) -> int:
    """A batch size: an integer in 1..MAX_BATCH."""
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH}, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
    if not 0 < value <= 4096:
        raise argparse.ArgumentTypeError(f"must be in (0, 4096] MB, got {text}")
    return int(value * (1 << 20))


def seconds(text: str) -> float:
    """A duration in seconds: a positive, finite number."""
    value = finite_number(text)
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be in (0, 86400] seconds, got {text}")
    return value


def finite_number(text: str) -> float:
    """A finite float (``nan`` and ``inf`` are refused by every command alike)."""
    return _checked(text, lambda value: checks.finite(value, "value"))


def millions_of_macs(text: str) -> float:
    """A budget in millions of MACs: a positive, finite number."""
    return _checked(text, checks.target_macs)


def unit_interval(text: str) -> float:
    """A number in [0, 1] (an accuracy, a share)."""
    return _checked(text, lambda value: checks.unit_interval(value, "value"))


def add_operating_point_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--policy``, ``--answers``, ``--threshold``, ``--target-macs``, ``--k-cpt``: how a
    command picks the operating point it runs a network at (``dynroute.policies.resolve``)."""
    parser.add_argument(
        "--policy",
        default=None,
        choices=OPERATING_POLICIES,
        help=f"routing policy (default: {what}); best: the most accurate of every policy "
        "within --target-macs",
    )
    parser.add_argument(
        "--answers",
        default=None,
        choices=ANSWER_CHOICES,
        help="what the exits answer with: raw, calibrated or combined (fitted on the "
        "validation split), or any (chosen there)",
    )
    parser.add_argument(
        "--threshold", type=finite_number, default=None, help="the policy's threshold"
    )
    parser.add_argument(
        "--target-macs",
        type=millions_of_macs,
        default=None,
        metavar="M",
        help="choose the policy's operating point for this mean budget, in millions of MACs, "
        "on the run's validation split (an export: among the points it carries)",
    )
    parser.add_argument(
        "--k-cpt", type=k_cpt_value, default=None, help="k_cpt input of a dynamic-k_cpt net"
    )
