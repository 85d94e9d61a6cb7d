"""Arguments that several commands share, defined once: data folders, threads, k_cpt,
operating points, sizes; and ``ranged``, the argument type every numeric option is parsed
with. Each parses and range-checks its value (``dynroute.core.checks``) before any work
starts, so every command that takes an option refuses the same bad values with the same
one-line message: the option, its range and why."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from dynroute.core.operating import ANY, BEST
from dynroute.core.policy import ALIASES, ANSWERS
from dynroute.core.rules import deployable_rules
from dynroute.data.sources import DATA_DIR_ENV

#: What ``--answers`` accepts: a kind of answers, or any (chosen on validation).
ANSWER_CHOICES = (*ANSWERS, ANY)


def operating_policies() -> tuple[str, ...]:
    """Policy names the operating-point options accept: every deployable rule registered
    (``dynroute.core.rules``), the old aliases and ``best`` (chosen among every policy)."""
    return (*deployable_rules(), *ALIASES, BEST)


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


def _parse(text: str, integer: bool) -> int | float:
    """An option's text as an int or a float, or the argparse refusal."""
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None


def ranged(allowed: checks.Range) -> Callable[[str], Any]:
    """The argparse ``type`` of an option whose values lie in ``allowed`` (a
    ``dynroute.core.checks.Range``): the text parsed and checked before any work starts, a value
    out of range refused in one line with the range and why (argparse names the flag)."""

    def parse(text: str) -> int | float:
        value = _parse(text, allowed.integer)
        if not allowed.bounds.contains(value):
            raise argparse.ArgumentTypeError(allowed.refusal(value))
        return value

    return parse


def ranged_list(allowed: checks.Range, most: int = checks.MAX_LIST) -> Callable[[str], list]:
    """The argparse ``type`` of a comma-separated list of values in ``allowed``: one to
    ``most`` of them."""
    one = ranged(allowed)

    def parse(text: str) -> list:
        values = [one(part.strip()) for part in text.split(",") if part.strip()]
        if not 1 <= len(values) <= most:
            raise argparse.ArgumentTypeError(
                f"expected 1 to {most} comma-separated values, got {len(values)}"
            )
        return values

    return parse


def config_range(name: str) -> checks.Range:
    """The range of training option ``name`` (``TrainConfig``), for a command that takes the
    same value (a seed, a validation size): one range for both."""
    from dynroute.train.config import TrainConfig

    field = TrainConfig.__dataclass_fields__[name]
    return checks.Range(field.metadata["bounds"], field.metadata["integer"], field.metadata["help"])


def _checked(text: str, check: Callable[[float], Any]) -> float:
    """``text`` as a number that passes ``check`` (a ``dynroute.core.checks`` function), with
    the same message the library gives."""
    value = _parse(text, integer=False)
    try:
        check(value)
    except DynrouteError as exc:  # "`k_cpt` must be ...": argparse names the flag itself
        raise argparse.ArgumentTypeError(re.sub(r"^`\w+` ", "", str(exc))) from None
    return value


def k_cpt_value(text: str) -> float:
    """A ``--k-cpt`` value: a finite number in [0, 1] (the price of one MAC)."""
    return _checked(text, checks.k_cpt)


#: The argparse type of a thread count (``checks.THREADS``).
threads_value = ranged(checks.THREADS)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=None,
        help="CPU threads for torch (default: every available core; use 1 per process "
        "when several jobs share the machine)",
    )


#: A batch size: an integer in ``checks.BATCH_SIZE``.
batch_size = ranged(checks.BATCH_SIZE)


def megabytes(text: str) -> int:
    """A size in megabytes (``checks.MEGABYTES``), as bytes."""
    return int(ranged(checks.MEGABYTES)(text) * (1 << 20))


#: A duration in seconds (``checks.SECONDS``).
seconds = ranged(checks.SECONDS)


def finite_number(text: str) -> float:
    """A finite float (``nan`` and ``inf`` are refused by every command alike)."""
    return _checked(text, lambda value: checks.finite(value, "value"))


def millions_of_macs(text: str) -> float:
    """A budget given in millions of MACs, as MACs (the one place the command line scales
    a budget): positive, at most ``checks.MAX_MACS``."""
    return _checked(text, lambda value: checks.target_macs(value * 1e6)) * 1e6


def unit_interval(text: str) -> float:
    """A number in [0, 1] (an accuracy, a share)."""
    return _checked(text, lambda value: checks.unit_interval(value, "value"))


def add_operating_point_arguments(
    parser: argparse.ArgumentParser, what: str, *, calibrating: bool = False
) -> None:
    """``--policy``, ``--answers``, ``--threshold``, ``--target-macs``, ``--k-cpt``: how a
    command picks the operating point it runs a network at (``dynroute.core.operating``; read
    back with ``OperatingRequest.from_options``). ``calibrating``: ``calibrate``'s set (the
    policy to fit, no threshold: it is what calibrating chooses)."""
    parser.add_argument(
        "--policy",
        default="learned" if calibrating else None,
        choices=operating_policies(),
        help=f"routing policy (default: {what}); best: the most accurate of every policy "
        "on every kind of answer within --target-macs; ensemble: confidence or budgeted on "
        "combined answers",
    )
    parser.add_argument(
        "--answers",
        default=None,
        choices=ANSWER_CHOICES,
        help="what the exits answer with: raw, calibrated or combined (fitted on the "
        "validation split), or any (chosen there); default raw (the scheduler: any)",
    )
    if not calibrating:
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
        "--k-cpt",
        type=k_cpt_value,
        default=None,
        help="k_cpt input of a dynamic-k_cpt net (calibrate: for its threshold policies)",
    )
