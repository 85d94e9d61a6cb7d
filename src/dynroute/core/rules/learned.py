"""The paper's routers: each junction's router, learned in training, picks a sink. They
decide without reading the answers; the exit they choose still answers as the policy says
(raw, recalibrated or combined). Their one operating point per k_cpt is the network's own:
``calibrate`` runs the routers rather than fitting a family here."""

from __future__ import annotations

from dynroute.core.rules.base import ExitRule, register_rule


@register_rule
class Learned(ExitRule):
    name = "learned"
    summary = "the paper's routers: each junction's router picks a sink (learned in training)"
    parameter = "none"
    learned = True
    reads_exits = False
