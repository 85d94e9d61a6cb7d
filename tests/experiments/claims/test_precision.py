"""The bf16 claim: a bf16 network against its float32 seeds' spread, on hand-made results."""

from __future__ import annotations

from typing import Any

from dynroute.experiments.claims import NOT_RUN, NOT_SUPPORTED, SUPPORTED, Context, check_claims
from dynroute.experiments.claims.precision import bf16_claim, precision_rows
from dynroute.experiments.policy_claims import EQUAL_FOOTING_VERSION

NAMES = {"experiment": "hybrid-net", "network": "net"}


def actor(accuracy: float, shares: list[float]) -> dict[str, Any]:
    """An actor network's result: no policy table, its routed point's exit shares."""
    leaves = [{"is_leaf": True, "classified": share} for share in shares]
    nodes = [{"is_leaf": False, "classified": 0.0}, *leaves]
    point = {"accuracy": accuracy, "mean_macs": 3e6, "k_cpt": 4e-9, "nodes": nodes}
    return {**NAMES, "config": {"strategy": "actor"}, **point, "points": [point]}


def multi_exit(*accuracies: float) -> dict[str, Any]:
    """A multi-exit network's result with an equal-footing table: one budget per accuracy."""
    rows = [
        {"best_baseline": "confidence/raw",
         "policies": {"confidence/raw": {"test": {"accuracy": a, "mean_macs": 1e6 * (i + 1)}}}}
        for i, a in enumerate(accuracies)
    ]  # fmt: skip
    point = {"accuracy": 0.5, "mean_macs": 1e6, "k_cpt": None, "nodes": []}  # not compared
    return {
        **NAMES,
        "config": {"strategy": "multi-exit"},
        **point,
        "points": [point],
        "budgets": {"version": EQUAL_FOOTING_VERSION, "budgets": rows},
    }


def by_seed(**networks: dict[str, Any]) -> dict[str, dict]:
    return {"hybrid-net": networks}


def claim(float32: list[dict], bf16: list[dict]):
    results = {str(s): {"hybrid-net": {"net": r}} for s, r in enumerate(float32)}
    bf16_results = {str(s): {"hybrid-net": {"net": r}} for s, r in enumerate(bf16)}
    variants = {s: r for s, r in results.items() if s != "0"}
    return bf16_claim(Context(results["0"], variants, bf16=bf16_results))


def test_frontier_accuracy_within_the_seed_spread_holds():
    float32 = [multi_exit(0.90, 0.92), multi_exit(0.89, 0.91), multi_exit(0.91, 0.93)]
    rows = precision_rows({str(s): by_seed(net=r) for s, r in enumerate(float32)},
                          {"0": by_seed(net=multi_exit(0.895, 0.905))})  # fmt: skip
    (row,) = rows
    assert row.measure == "frontier" and row.float32 == {"0": 0.91, "1": 0.90, "2": 0.92}
    assert row.bf16 == {"0": 0.90} and row.accuracy_holds and row.shares_hold
    assert claim(float32, [multi_exit(0.895, 0.905)]).verdict == SUPPORTED
    assert claim(float32, [multi_exit(0.88, 0.90)]).verdict == NOT_SUPPORTED  # below all


def test_exit_shares_further_than_the_seeds_apart_fail():
    float32 = [actor(0.95, [0.5, 0.3, 0.2]), actor(0.94, [0.45, 0.35, 0.2])]  # TV 0.05
    close = claim(float32, [actor(0.95, [0.48, 0.32, 0.2])])  # TV 0.02
    assert close.verdict == SUPPORTED and "0.020 from float32 (seeds 0.050 apart)" in close.evidence
    assert claim(float32, [actor(0.95, [0.2, 0.3, 0.5])]).verdict == NOT_SUPPORTED  # TV 0.3


def test_one_float32_seed_is_not_enough_and_no_bf16_no_claim():
    assert claim([actor(0.95, [1.0])], [actor(0.95, [1.0])]).verdict == NOT_RUN
    found = check_claims({"hybrid-net": {"net": actor(0.95, [1.0])}})  # every claim runs
    assert not any(c.claim.startswith("training in bfloat16") for c in found)
    assert bf16_claim(Context({"hybrid-net": {"net": actor(0.95, [1.0])}})) is None
