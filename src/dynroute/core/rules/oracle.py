"""The oracle: every example leaves at its cheapest correct exit. It needs the labels, so
it is a bound on what any rule could reach on these exits, never deployed."""

from __future__ import annotations

from dynroute.core.rules.base import ExitRule, register_rule


@register_rule
class Oracle(ExitRule):
    name = "oracle"
    summary = "the cheapest correct exit (needs labels: a bound, never deployed)"
    parameter = "none"
    reads_exits = False
    deployable = False
    needs_labels = True
