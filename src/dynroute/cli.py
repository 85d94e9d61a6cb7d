"""The ``dynroute`` command line: a thin shell over the library.

Each sub-command lives in ``dynroute.commands.<area>`` and exposes
``add_parser(subparsers)``; this module only wires them together and turns
library errors into clean messages. The library names its arguments in backquotes
(`` `target_macs` ``); the message printed here names the command's flag instead
(``--target-macs``). SIGTERM stops a command the way Ctrl-C does (cleanly, exit status
143 against Ctrl-C's 130), and a failure the library did not foresee (a file operation,
memory) still ends in one line, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys

from dynroute import __version__
from dynroute.core.errors import DynrouteError, Interrupted, stop_signals
from dynroute.io.atomic import os_reason

#: Optional packages -> the extra that installs them (``pyproject.toml``).
MISSING_EXTRAS = {
    "torch": "torch",
    "matplotlib": "torch",
    "onnx": "export",
    "onnxruntime": "deploy",
    "httptools": "serve",
    "uvicorn": "serve",
    "ray": "ray",
}

COMMAND_MODULES = ["data", "model", "train", "evaluate", "policies", "deploy", "experiments"]


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
    _record_flags(parser)
    return parser


def _record_flags(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)parser a default ``_flags``: its arguments' names -> their flags, so
    a library message about an argument can name the flag of the command that ran."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _record_flags(child)
        elif action.option_strings:
            flags[action.dest] = max(action.option_strings, key=len)
            for option in action.option_strings:  # --no-augment for dest augment
                flags.setdefault(option.lstrip("-").replace("-", "_"), option)
    parser.set_defaults(_flags=flags)


def as_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with each backquoted argument name that is a flag here written as one."""
    return re.sub(
        r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: flags.get(m.group(1), m.group(0)), message
    )


def _tolerant_output() -> None:
    """Print names that are not valid UTF-8 (a folder's raw bytes) escaped, never crash on them."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    _tolerant_output()
    try:
        with stop_signals():  # SIGINT/SIGTERM unwind the command: exit 128 + signal
            return int(args.func(args) or 0)
    except DynrouteError as exc:
        print(f"dynroute: error: {as_flags(str(exc), args._flags)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"dynroute: {as_flags(str(exc), args._flags)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dynroute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dynroute ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:  # an optional dependency this command needs
        extra = MISSING_EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"dynroute: error: `dynroute {args.command}` needs {exc.name}, which is not "
            f"installed: pip install 'dynroute[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except MemoryError as exc:
        print(
            f"dynroute: error: out of memory{f' ({exc})' if str(exc) else ''}: the data or the "
            "network needs more memory than this process may use",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # a file operation the library did not foresee failing
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dynroute: error: {where}{os_reason(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
