"""The lead studies' claims (``dynroute study lead``): how many times fewer MACs the routed
network needs for the best static network's accuracy, each chosen on validation, against
the goal for its dataset. One claim per lead study of the scale.
"""

from __future__ import annotations

from dynroute.experiments.claims.common import (
    DATASETS,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)

#: How many times fewer MACs than the best static network the routed network should need
#: for its accuracy (the exit-training issue's goals), by dataset.
LEAD_GOALS = {"hybrid": 5.0, "cifar10": 3.0}


@register_claim
def lead_claims(context: Context) -> list[Claim]:
    """Per lead study: the routed runs' MAC ratio against its dataset's goal, supported when
    the whole 95 % interval reaches it."""
    return [
        _lead_claim(name, study)
        for name, study in sorted(context.studies.items())
        if study.get("study") == "lead"
    ]


def _lead_claim(name: str, study: dict) -> Claim:
    dataset = study.get("dataset", "")
    goal = LEAD_GOALS.get(dataset)
    title = DATASETS.get(dataset, dataset)
    claim = (
        f"the routed network (chosen on validation) matches the best static network's "
        f"accuracy (chosen on validation, trained as long) with at least {goal:g}× "
        f"fewer MACs ({title}; supported when the whole 95 % interval is at or above)"
        if goal
        else f"the routed network matches the best static network with fewer MACs ({name})"
    )
    routed = study.get("routed")
    if routed is None:
        return Claim(claim, NOT_SUPPORTED, "no routed point reaches its accuracy")
    low, high = study["mac_ratio_interval"]
    versus = study["versus_static"]
    static = study["static"]
    return Claim(
        claim,
        SUPPORTED if low >= (goal or 1.0) else NOT_SUPPORTED,
        f"{study['mac_ratio']:.2f}× fewer (95 % interval {low:.2f}–{high:.2f}): "
        f"{routed['family']} on {routed['run']} at "
        f"{routed['test']['mean_macs'] / 1e6:.2f} M, "
        f"{100 * routed['test']['accuracy']:.2f} % on test, against "
        f"{static['network']}{static_answers(static)} at "
        f"{static['test']['mean_macs'] / 1e6:.2f} M, "
        f"{100 * static['test']['accuracy']:.2f} %; accuracy difference "
        f"{100 * versus['accuracy_difference']:+.2f} points (McNemar p = "
        f"{versus['p_value']:.2g})",
    )


def static_answers(static: dict) -> str:
    """How a lead study's static network answers, where not through its raw exit (the
    claim's and the tables' words)."""
    return " (recalibrated exit)" if static.get("answers") == "calibrated" else ""
