"""A tiny trained run with a validation split, for the studies."""

from helpers.small_run import run_copy, small_run  # noqa: F401  (fixtures)
