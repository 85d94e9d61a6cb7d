"""Whether bfloat16 training holds accuracy (``sweep --bf16`` beside float32 seeds).

A network trained in bf16 holds when, against the same network trained in float32 on
several seeds (``sweep --seed N``: other validation splits, initialisations, batch orders):

- its accuracy is at or above the lowest float32 seed's: the frontier accuracy (the mean
  over the equal-footing table's budgets of the best policy's test accuracy, each chosen on
  validation) where the result has that table, else the test accuracy of its own point;
- its routers' exit shares are no further from the float32 seed-0 run's (total variation
  distance) than the float32 seeds are from each other, for networks with learned routers.

The rule was fixed before any bf16 network was measured. It needs float32 results on at
least two seeds of the same network, or the claim says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from dynroute.experiments.claims.common import (
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Context,
    register_claim,
)
from dynroute.experiments.policy_claims import EQUAL_FOOTING_VERSION
from dynroute.experiments.results import Results

#: Float32 seeds a network needs before its bf16 run can be judged against their spread.
MIN_FLOAT32_SEEDS = 2


@dataclass(frozen=True)
class PrecisionRow:
    """One network: its float32 seeds' accuracies and exit shares against bf16's."""

    label: str
    measure: str  # "frontier" or "routed point"
    float32: dict[str, float]  # seed -> accuracy
    bf16: dict[str, float]
    float32_macs: dict[str, float]
    bf16_macs: dict[str, float]
    share_distance: float | None  # bf16 seed 0 against float32 seed 0 (total variation)
    seed_distance: float | None  # the largest between float32 seeds

    @property
    def accuracy_holds(self) -> bool:
        return min(self.bf16.values()) >= min(self.float32.values())

    @property
    def shares_hold(self) -> bool:
        if self.share_distance is None or self.seed_distance is None:
            return True  # no routers, or no seed-0 pair: nothing to compare
        return self.share_distance <= self.seed_distance

    @property
    def judged(self) -> bool:
        return len(self.float32) >= MIN_FLOAT32_SEEDS


def frontier(result: dict[str, Any]) -> tuple[float, float] | None:
    """Means over the equal-footing table's budgets of the best policy's test accuracy and
    test MACs (each chosen on validation), or None without a current table."""
    table = result.get("budgets")
    if not table or table.get("version", 1) < EQUAL_FOOTING_VERSION:
        return None
    tests = [row["policies"][row["best_baseline"]]["test"] for row in table["budgets"]
             if row.get("best_baseline")]  # fmt: skip
    if not tests:
        return None
    return float(np.mean([t["accuracy"] for t in tests])), float(
        np.mean([t["mean_macs"] for t in tests])
    )


def exit_shares(result: dict[str, Any]) -> np.ndarray | None:
    """The share of test images each exit classifies at the network's own point (None for
    networks without learned routers)."""
    if result.get("config", {}).get("strategy") not in ("actor", "critic"):
        return None
    nodes = result["points"][0].get("nodes") or []
    shares = [node["classified"] for node in nodes if node.get("is_leaf")]
    return np.asarray(shares, dtype=float) if shares else None


def _measure(result: dict[str, Any], on_frontier: bool) -> tuple[float, float]:
    """(accuracy, mean MACs) of one result: on its frontier, or at its own point."""
    if on_frontier:
        return frontier(result)  # type: ignore[return-value]
    return float(result["accuracy"]), float(result["mean_macs"])


def _runs(seeds: dict[str, Results], experiment: str, network: str) -> dict[str, dict]:
    """One network's result on each seed that has it."""
    return {
        seed: results[experiment][network]
        for seed, results in sorted(seeds.items())
        if network in results.get(experiment, {})
    }


def precision_rows(float32: dict[str, Results], bf16: dict[str, Results]) -> list[PrecisionRow]:
    """Every network trained in bf16 (``bf16``: seed -> results), against its float32 runs
    (``float32``: seed -> results, "0" the registry's own)."""
    labels = sorted(
        f"{experiment}/{network}"
        for results in bf16.values()
        for experiment, networks in results.items()
        for network in networks
    )
    rows = []
    for label in dict.fromkeys(labels):
        ours, theirs = _runs(float32, *label.split("/")), _runs(bf16, *label.split("/"))
        on_frontier = all(frontier(r) is not None for r in (*ours.values(), *theirs.values()))
        measured = {seed: _measure(r, on_frontier) for seed, r in ours.items()}
        measured_bf16 = {seed: _measure(r, on_frontier) for seed, r in theirs.items()}
        shares = {seed: exit_shares(r) for seed, r in ours.items()}
        seed_distance = max(
            (_distance(a, b) for a, b in combinations(shares.values(), 2) if a is not None),
            default=None,
        )
        first = shares.get("0")
        first_bf16 = exit_shares(theirs["0"]) if "0" in theirs else None
        rows.append(
            PrecisionRow(
                label,
                "frontier" if on_frontier else "routed point",
                {s: a for s, (a, _) in measured.items()},
                {s: a for s, (a, _) in measured_bf16.items()},
                {s: m for s, (_, m) in measured.items()},
                {s: m for s, (_, m) in measured_bf16.items()},
                None if first is None or first_bf16 is None else _distance(first, first_bf16),
                seed_distance,
            )
        )
    return rows


def _distance(first: np.ndarray | None, second: np.ndarray | None) -> float:
    """Total variation distance between two exit-share vectors."""
    if first is None or second is None or len(first) != len(second):
        return float("inf")
    return float(0.5 * np.abs(first - second).sum())


@register_claim
def bf16_claim(context: Context) -> Claim | None:
    """bf16 holds on every network trained in it (None where none was)."""
    if not context.bf16:
        return None
    claim = (
        "training in bfloat16 holds accuracy: every network trained in bf16 is at or above "
        "its lowest float32 seed (frontier accuracy, or its routed point's), and its exit "
        "shares are no further from float32's than the float32 seeds are from each other"
    )
    rows = precision_rows({"0": context.results, **context.variants}, context.bf16)
    if not rows:
        return None
    unjudged = [row.label for row in rows if not row.judged]
    if unjudged:
        return Claim(
            claim,
            NOT_RUN,
            f"needs float32 results on {MIN_FLOAT32_SEEDS}+ seeds (sweep --seed N) of "
            + ", ".join(unjudged),
        )
    evidence = "; ".join(
        f"{row.label}: bf16 {_points(row.bf16)} against float32 {_points(row.float32)}"
        + (
            ""
            if row.share_distance is None
            else f", exit shares {row.share_distance:.3f} from float32 (seeds "
            f"{row.seed_distance:.3f} apart)"
        )
        for row in rows
    )
    holds = all(row.accuracy_holds and row.shares_hold for row in rows)
    return Claim(claim, SUPPORTED if holds else NOT_SUPPORTED, evidence)


def _points(values: dict[str, float]) -> str:
    return "/".join(f"{100 * v:.2f}" for _, v in sorted(values.items())) + " %"
