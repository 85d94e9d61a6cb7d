"""One exception type for every user-facing failure.

The CLI turns a ``DynrouteError`` into a one-line message and exit status 2, so
bad input never ends in a bare traceback.
"""


class DynrouteError(Exception):
    """A problem the user can fix (bad input, missing file, invalid option)."""
