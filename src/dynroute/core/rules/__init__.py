"""Exit rules: how the exits' answers decide where an example leaves, one rule per file
(``base`` says what a rule carries). Importing the package registers the built-in rules,
in the order the command line lists them."""

from dynroute.core.rules import learned, confidence, entropy, budgeted, scheduler, oracle  # noqa: F401, I001
from dynroute.core.rules.base import (
    RULES,
    ExitRule,
    deployable_rules,
    register_rule,
    threshold_family,
    unregister_rule,
)

__all__ = [
    "RULES",
    "ExitRule",
    "deployable_rules",
    "register_rule",
    "threshold_family",
    "unregister_rule",
]
