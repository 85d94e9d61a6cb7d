"""A tiny routed run with a validation split, for the rules' end-to-end test."""

from helpers.small_run import run_copy, small_run  # noqa: F401  (fixtures)
