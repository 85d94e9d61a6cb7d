"""The exceptions every user-facing failure or stop becomes.

The CLI turns a ``DynrouteError`` into a one-line message and exit status 2, so
bad input never ends in a bare traceback; an ``Interrupted`` (Ctrl-C or SIGTERM)
into its message and status 128 + the signal's number (130 for Ctrl-C).
"""

import signal


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
