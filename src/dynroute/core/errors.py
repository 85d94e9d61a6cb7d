"""The exceptions every user-facing failure or stop becomes.

The CLI turns a ``DynrouteError`` into a one-line message and exit status 2, so
bad input never ends in a bare traceback; an ``Interrupted`` (Ctrl-C or SIGTERM)
into its message and status 128 + the signal's number (130 for Ctrl-C).
"""

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class DynrouteError(Exception):
    """A problem the user can fix (bad input, missing file, invalid option)."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM) asked the command to stop; ``message`` says what was left.

    A ``KeyboardInterrupt``, so code that cleans up after Ctrl-C cleans up after SIGTERM too.
    """

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.message = message

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - an unnamed signal
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message or f"interrupted ({self.signal_name})"


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_signals(handler: Callable[[int, Any], Any] | int = _raise_interrupted) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` while the block runs, then back to what they were.
    The default raises ``Interrupted``, so a command unwinds (temporary files removed, locks
    released); ``signal.SIG_IGN`` lets a second Ctrl-C not cut short a clean stop. Outside
    the main thread signals cannot be handled and are left alone."""
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then go where they would have gone.

    For short writes that C code drives: ``torch.save`` calls back into Python to write,
    and an ``Interrupted`` raised inside that callback comes out as torch's own
    ``RuntimeError`` ("unexpected pos"), so a Ctrl-C that lands mid-checkpoint would read
    as a failure, not a stop. Held here, the file is finished and the stop comes after it.
    Only the first signal is delivered (a second Ctrl-C while held is the same request).
    Outside the main thread signals cannot be handled and the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])
