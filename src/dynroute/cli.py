"""The ``dynroute`` command line: a thin shell over the library.

Each sub-command lives in ``dynroute.commands.<area>`` and exposes
``add_parser(subparsers)``; this module only wires them together and turns
library errors into clean messages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dynroute import __version__
from dynroute.errors import DynrouteError

COMMAND_MODULES = ["data", "model", "train", "policies", "experiments"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynroute",
        description="Dynamically-routed neural networks (McGill & Perona, ICML 2017).",
    )
    parser.add_argument("--version", action="version", version=f"dynroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"dynroute.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DynrouteError as exc:
        print(f"dynroute: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynroute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dynroute ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
