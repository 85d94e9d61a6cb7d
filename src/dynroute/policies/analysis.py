"""Operating points of one trained tree: every routing policy's accuracy against mean MACs
on one split, traced from one dense pass (``dynroute policies``; the sweep's analyses).

- ``learned``: the routers' argmax (one point; one per k_cpt for a dynamic-k_cpt net);
- ``confidence`` / ``entropy``: the threshold swept over the values that occur;
- ``oracle``: the cheapest correct exit, and below its accuracy the cheapest way to be
  right that often (an upper bound on any router over these exits);
- ``single exit``: every example leaves at one exit, each exit in turn (static routing
  on the same exits).

These curves are traced on the split they are drawn for (a view of what the exits allow);
``dynroute.policies.table`` fits policies on validation and scores them on test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynroute.core.policy import Policy
from dynroute.core.rules.base import thresholds_at_quantiles, with_threshold
from dynroute.nn.prediction import as_tensor, predict_dense
from dynroute.nn.tree import RoutedTree, evaluation_mode
from dynroute.policies.curves import as_points, macs_for_accuracy
from dynroute.policies.exit_table import ExitTable, TreeFacts, dense_outputs, exit_table
from dynroute.policies.statistics import mcnemar, pack_bits

#: Thresholds per curve: the certainty values at these many quantiles.
CURVE_POINTS = 201
#: Points of a multi-exit net's threshold curves that keep per-example correctness in its
#: result file, for the paired comparison with other networks (``threshold_curve``).
RESULT_PAIRED_POINTS = 41


def analysis_k_values(
    tree: RoutedTree, k_cpt_set: Sequence[float] | None = None
) -> list[float | None]:
    """The k_cpt inputs a tree is analysed at: every value of its k_cpt set for a
    dynamic-k_cpt net (the paper's set by default), none for a fixed-cost one."""
    from dynroute.train.config import PAPER_K_CPT_SET

    if not tree.dynamic_k_cpt:
        return [None]
    return [float(k) for k in (k_cpt_set or PAPER_K_CPT_SET)]


def threshold_curve(
    table: ExitTable, name: str, paired_points: int = 0, count: int = CURVE_POINTS
) -> list[dict[str, Any]]:
    """The rule's points over thresholds at the quantiles of the measures seen (on the
    table's answers).

    ``paired_points`` of them, evenly spread along the curve, also carry the per-example
    correctness (``correct_bits``), so another network can be compared with this one
    example by example (McNemar) at matched mean MACs without rerunning it.
    """
    template = with_threshold(table.answers, name, 0.5)
    thresholds = thresholds_at_quantiles(table, template, count)
    paired = set()
    if paired_points > 0:
        paired = {round(i) for i in np.linspace(0, len(thresholds) - 1, paired_points)}
    points = []
    for i, threshold in enumerate(thresholds):
        policy = with_threshold(template, name, threshold)
        positions = table.exits(policy)
        point = {"threshold": threshold, **table.point(positions, policy)}
        if i in paired:
            point["correct_bits"] = pack_bits(table.correctness(positions))
        points.append(point)
    return points


def single_exit_points(table: ExitTable, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every example leaves at one exit: static routing on the trained exits."""
    n = len(table)
    oracle_macs = table.oracle_macs()
    return [
        {
            "exit": name,
            "accuracy": float(table.correct[:, k].mean()) if n else 0.0,
            "mean_macs": float(oracle_macs[k]),
        }
        for k, name in enumerate(names)
    ]


def oracle_curve(table: ExitTable) -> list[dict[str, Any]]:
    """The cheapest mean MACs at each accuracy up to the oracle's (on the table's answers).

    Each example costs its cheapest correct exit; below the oracle's accuracy the
    examples whose correct answer is dearest are sent to the cheapest exit instead.
    """
    macs = table.oracle_macs()
    cheapest = float(macs.min())
    dear = np.where(table.correct, macs[None, :], math.inf).min(axis=1)
    right = np.isfinite(dear)
    extra = np.sort(dear[right] - cheapest)[::-1]
    n = len(table)
    total = n * cheapest + float(extra.sum())
    correct = int(right.sum())
    points = [{"accuracy": correct / n, "mean_macs": total / n}]
    steps = max(1, len(extra) // 100)
    dropped = 0.0
    for k in range(0, len(extra), steps):
        dropped += float(extra[k : k + steps].sum())
        points.append(
            {"accuracy": (correct - min(k + steps, len(extra))) / n,
             "mean_macs": (total - dropped) / n}
        )  # fmt: skip
    return sorted(points, key=lambda p: p["mean_macs"])


def matched_threshold(
    table: ExitTable, name: str, macs: float
) -> tuple[Policy, dict[str, float], np.ndarray]:
    """The threshold whose mean MACs come closest to ``macs``; its point and correctness."""
    best = min(threshold_curve(table, name), key=lambda p: abs(p["mean_macs"] - macs))
    policy = with_threshold(table.answers, name, best["threshold"])
    positions = table.exits(policy)
    return policy, table.point(positions, policy), table.correctness(positions)


def analyse(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k_values: Sequence[float | None] = (None,),
    batch_size: int = 500,
    paired_points: int = 0,
) -> dict[str, Any]:
    """Every policy's curve on one split, the routing quality of each learned point, and
    learned routing against thresholds at matched mean MACs (JSON-ready).

    ``k_values``: the k_cpt inputs of a dynamic-k_cpt net (one learned point each);
    ``(None,)`` for a fixed-cost net. ``paired_points``: how many points of the confidence
    curve keep their per-example correctness (``threshold_curve``).
    """
    labels_t = as_tensor(labels, torch.long)
    images_t = as_tensor(images, torch.float32)
    table = exit_table(tree, dense_outputs(tree, images_t, labels_t, k_values[0], batch_size))
    shape = tree.shape
    names = [tree.nodes[leaf].name for leaf in shape.leaves]
    oracle = oracle_curve(table)
    single = single_exit_points(table, names)
    # Per-example bits on the confidence curve only: the paired claims compare against it.
    curves = {
        name: threshold_curve(table, name, paired_points if name == "confidence" else 0)
        for name in ("confidence", "entropy")
    }
    learned = []
    learned_macs = TreeFacts.of(tree).leaf_macs(Policy())
    for k, exits in zip(k_values, learned_exits(tree, images_t, k_values, batch_size), strict=True):
        positions = np.asarray([shape.leaf_position[int(e)] for e in exits.tolist()], np.int64)
        correct = table.correctness(positions)
        point = {
            "k_cpt": k,
            "accuracy": float(correct.mean()),
            "mean_macs": float(learned_macs[positions].mean()),
        }
        point["routing_quality"] = _routing_quality(point, single, curves, oracle)
        point["against_thresholds"] = {}
        for name in curves:
            policy, matched, other = matched_threshold(table, name, point["mean_macs"])
            point["against_thresholds"][name] = {
                "threshold": policy.threshold,
                **matched,
                **mcnemar(correct, other),
            }
        point["correct_bits"] = pack_bits(correct)
        learned.append(point)
    return {
        "num_examples": len(labels_t),
        "exits": names,
        "learned": learned,
        **curves,
        "oracle": oracle,
        "single_exit": single,
    }


def learned_exits(
    tree: RoutedTree,
    images: torch.Tensor,
    k_values: Sequence[float | None],
    batch_size: int = 500,
) -> list[torch.Tensor]:
    """The routers' exits (node indices) for every k_cpt input, from one pass over the images.

    Routers that say what they read (``Router.reads``: the coarsest map) are run again
    on that alone for each k_cpt; other trees get one dense pass per k_cpt.
    """
    inputs = router_inputs(tree, images, batch_size)
    if inputs is None:
        with evaluation_mode(tree):
            return [
                torch.cat(
                    [
                        predict_dense(tree, images[s : s + batch_size], k).exits.cpu()
                        for s in range(0, len(images), batch_size)
                    ]
                )
                for k in k_values
            ]
    return [exits_for_k(tree, inputs, len(images), k) for k in k_values]


def router_inputs(
    tree: RoutedTree, images: torch.Tensor, batch_size: int = 500
) -> dict[int, torch.Tensor] | None:
    """What each junction's router reads, for every image (None if a router does not say)."""
    junctions = tree.junctions
    if not junctions or not all(hasattr(tree.nodes[j].router, "reads") for j in junctions):
        return None
    device = next(tree.parameters()).device
    features: dict[int, list[torch.Tensor]] = {j: [] for j in junctions}

    def keep(index: int, signal: Any) -> list[tuple[int, Any]]:
        out = tree.nodes[index].transform(signal)
        if index in features:
            features[index].append(tree.nodes[index].router.reads(out))
        return [(child, out) for child in tree.children_of[index] if child not in tree.leaves]

    with evaluation_mode(tree), torch.inference_mode():
        for s in range(0, len(images), batch_size):
            tree.walk(images[s : s + batch_size].to(device), keep)
    return {j: torch.cat(parts) for j, parts in features.items()}


def exits_for_k(
    tree: RoutedTree, inputs: dict[int, torch.Tensor], n: int, k_cpt: float | None
) -> torch.Tensor:
    """The routers' exits (node indices) given their inputs and a k_cpt input."""
    with evaluation_mode(tree), torch.inference_mode():
        like = next(iter(inputs.values()))
        k_feature = tree.router_k_cpt(k_cpt, n, like)
        scores = {j: tree.router_scores(j, x, k_feature) for j, x in inputs.items()}
        arrival = tree.arrival_probabilities(tree.hard_branches(scores), n, like)
        reached = torch.stack(arrival, dim=1)[:, tree.leaves] > 0.5
        position = reached.to(torch.uint8).argmax(dim=1)
        return torch.tensor(tree.leaves, device=position.device)[position].cpu()


def _routing_quality(
    point: dict[str, Any],
    single: list[dict[str, Any]],
    curves: dict[str, list[dict[str, Any]]],
    oracle: list[dict[str, Any]],
) -> dict[str, Any]:
    """At the learned point's accuracy: the mean MACs of single-exit (static) routing, of the
    best threshold policy and of the oracle, and the share of the static-to-oracle gap the
    routers close (None where a curve never reaches that accuracy)."""
    accuracy = point["accuracy"]
    static = macs_for_accuracy(as_points(single), accuracy)
    thresholds = {
        name: macs_for_accuracy(as_points(curve), accuracy) for name, curve in curves.items()
    }
    reached = [m for m in thresholds.values() if m is not None]
    best = min(reached) if reached else None
    bound = macs_for_accuracy(as_points(oracle), accuracy)
    share = None
    if static is not None and bound is not None and static - bound > 0:
        share = (static - point["mean_macs"]) / (static - bound)
    return {
        "static_macs": static,
        "threshold_macs": best,
        "oracle_macs": bound,
        "gap_closed": share,
    }
