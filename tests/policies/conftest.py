"""A tiny routed run with a validation split, for calibration and the resolver."""

from helpers.small_run import run_copy, small_run  # noqa: F401  (fixtures)
