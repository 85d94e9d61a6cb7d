"""Operating points of one trained tree: every routing policy's accuracy against mean MACs.

One dense pass over a split records, per example, what every exit answers (right or
wrong, how certain) and where the routers would send it. From that table alone every
policy of ``dynroute.nn.routing`` is replayed for any threshold without running the
network again, so a curve of hundreds of thresholds costs one pass:

- ``learned``: the routers' argmax (one point; one per k_cpt for a dynamic-k_cpt net);
- ``confidence`` / ``entropy``: the threshold swept over the values that occur;
- ``oracle``: the cheapest correct exit, and below its accuracy the cheapest way to be
  right that often (an upper bound on any router over these exits);
- ``single exit``: every example leaves at one exit, each exit in turn (static routing
  on the same exits).

``ExitTable.exits`` replays a policy exactly as ``predict_dense`` and the engine decide
(tests check it on random trees).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynroute.infer.curves import as_points, macs_for_accuracy
from dynroute.infer.paired import mcnemar, pack_bits
from dynroute.nn.macs import tree_costs
from dynroute.nn.policy import Policy
from dynroute.nn.prediction import as_tensor, predict_dense
from dynroute.nn.routing import combined_logits, confidence, exit_certainty, normalised_entropy
from dynroute.nn.tree import DenseOutput, RoutedTree, evaluation_mode

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


@dataclass
class ExitTable:
    """Per-example answers of every exit and the routers' path, for one split.

    ``correct``: (N, leaves); ``measure[policy]``: (N, leaves) the quantity the threshold
    policy tests (max softmax; normalised entropy). ``steps[policy]``: (N, depth) position
    (in ``leaves``) of the most certain exit at each junction along the path the routers
    take among non-exit sinks (-1 past the end); ``terminal``: where an example ends if
    no exit on that path passes the threshold.
    """

    leaves: list[int]
    labels: torch.Tensor
    correct: torch.Tensor
    measure: dict[str, torch.Tensor]
    steps: dict[str, torch.Tensor]
    terminal: torch.Tensor
    leaf_macs: dict[str, torch.Tensor]

    def exits(self, policy: Policy) -> torch.Tensor:
        """Position (in ``leaves``) of each example's exit under a threshold policy (for the
        ensemble policy, on a table of its combined answers: ``exit_table(policy=...)``)."""
        kind = "confidence" if policy.name == "budgeted" else policy.name
        steps = self.steps[kind]
        measure = self.measure[kind].gather(1, steps.clamp_min(0))
        # The same float32 comparisons as ``routing.passes``.
        if policy.name == "entropy":
            passing = measure <= policy.threshold
        elif policy.thresholds is not None:  # budgeted, or ensemble per exit
            thresholds = torch.tensor(policy.thresholds, dtype=torch.float32)
            passing = measure >= thresholds[steps.clamp_min(0)]
        else:
            passing = measure >= policy.threshold
        passing &= steps >= 0
        first = passing.to(torch.uint8).argmax(dim=1)
        chosen = steps.gather(1, first[:, None])[:, 0]
        return torch.where(passing.any(dim=1), chosen, self.terminal)

    def point(self, positions: torch.Tensor, cost_model: str) -> dict[str, float]:
        """Accuracy and mean MACs when example i leaves at exit ``positions[i]``."""
        n = len(self.labels)
        right = self.correct[torch.arange(n), positions]
        macs = self.leaf_macs[cost_model][positions]
        return {"accuracy": float(right.float().mean()), "mean_macs": float(macs.double().mean())}

    def correctness(self, positions: torch.Tensor) -> torch.Tensor:
        return self.correct[torch.arange(len(self.labels)), positions]


@dataclass
class DenseOutputs:
    """One dense pass over a split: every exit's logits (N, leaves, classes) and every
    junction's router scores, on the CPU; tables for every policy are built from it."""

    logits: torch.Tensor
    scores: dict[int, torch.Tensor]
    labels: torch.Tensor


def dense_outputs(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k_cpt: float | None = None,
    batch_size: int = 500,
) -> DenseOutputs:
    """Every exit's answer and every router's scores for a split (one dense pass)."""
    images = as_tensor(images, torch.float32)
    labels = as_tensor(labels, torch.long)
    device = next(tree.parameters()).device
    logits: list[torch.Tensor] = []
    scores: dict[int, list[torch.Tensor]] = {j: [] for j in tree.junctions}
    with evaluation_mode(tree), torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            out = tree.forward_dense(images[start : start + batch_size].to(device), k_cpt)
            logits.append(torch.stack([out.logits[leaf].float() for leaf in tree.leaves], 1).cpu())
            for j in tree.junctions:
                scores[j].append(out.scores[j].float().cpu())
    empty = torch.zeros(0, len(tree.leaves), tree.num_classes)
    return DenseOutputs(
        torch.cat(logits) if logits else empty,
        {j: torch.cat(parts) for j, parts in scores.items() if parts},
        labels,
    )


def exit_table(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray | None = None,
    labels: torch.Tensor | np.ndarray | None = None,
    k_cpt: float | None = None,
    batch_size: int = 500,
    *,
    outputs: DenseOutputs | None = None,
    policy: Policy | None = None,
) -> ExitTable:
    """Every exit's answer and the routers' path for a split (its dense pass, or
    ``outputs`` of one). With an ensemble ``policy``, the answers are its combinations of
    the exits passed (the table's measure is ``"ensemble"``); else the exits' own
    (``"confidence"`` and ``"entropy"``, which the budgeted policy reads too)."""
    if outputs is None:
        outputs = dense_outputs(tree, images, labels, k_cpt, batch_size)
    leaves = tree.leaves
    position = {leaf: k for k, leaf in enumerate(leaves)}
    raw = {leaf: outputs.logits[:, k] for k, leaf in enumerate(leaves)}
    if policy is not None and policy.name == "ensemble":
        policy.check_tree(len(leaves), tree.num_classes)
        with torch.inference_mode():
            answers = combined_logits(tree, policy, raw)
        kinds = {"ensemble": confidence}
    else:
        answers = raw
        kinds = {"confidence": confidence, "entropy": normalised_entropy}
    logits = [answers[leaf] for leaf in leaves]
    y = outputs.labels
    measure, steps = {}, {}
    dense = DenseOutput(scores=outputs.scores)
    for kind, function in kinds.items():
        certainty = torch.stack([exit_certainty(_probe(kind), z) for z in logits], 1)
        steps[kind], terminal = _router_path(tree, dense, certainty, position)
        measure[kind] = torch.stack([function(z) for z in logits], 1)
    costs = tree_costs(tree)
    return ExitTable(
        leaves=list(leaves),
        labels=y,
        correct=torch.stack([z.argmax(1) == y for z in logits], 1),
        measure=measure,
        steps=steps,
        terminal=terminal,
        leaf_macs={
            model: torch.tensor([costs.policy_path_macs(model)[leaf] for leaf in leaves])
            for model in ("learned", "threshold", "oracle", "ensemble")
        },
    )


def _probe(kind: str) -> Policy:
    """A policy of ``kind`` whose certainty measure ``exit_certainty`` computes."""
    return Policy("entropy" if kind == "entropy" else "confidence", 0.5)


def _router_path(
    tree: RoutedTree,
    out: Any,
    certainty: torch.Tensor,
    position: dict[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each example: the most certain exit at each junction on the path the threshold
    policy follows when nothing passes, and the exit it ends at then."""
    n = certainty.shape[0]
    device = certainty.device
    node = torch.zeros(n, dtype=torch.long, device=device)
    steps: list[torch.Tensor] = []
    terminal = torch.full((n,), -1, dtype=torch.long, device=device)
    for _ in range(len(tree.nodes)):
        if bool((terminal >= 0).all()):
            break
        step = torch.full((n,), -1, dtype=torch.long, device=device)
        next_node = node.clone()
        for index in node[terminal < 0].unique().tolist():
            rows = (node == index) & (terminal < 0)
            kids = tree.children_of[index]
            exits = [c for c in kids if tree.nodes[c].is_leaf]
            inner = [c for c in kids if not tree.nodes[c].is_leaf]
            if tree.nodes[index].is_leaf:  # reached by following a single sink
                terminal[rows] = position[index]
                continue
            if exits and len(kids) >= 2:
                columns = torch.tensor([position[c] for c in exits], device=device)
                best = certainty[rows][:, columns].argmax(dim=1)
                step[rows] = columns[best]
            if len(kids) == 1:
                next_node[rows] = kids[0]
            elif len(inner) == 1:
                next_node[rows] = inner[0]
            else:
                scores = out.scores[index][rows]
                if not inner:  # only exits: the router picks the fallback exit
                    terminal[rows] = torch.tensor([position[c] for c in kids], device=device)[
                        scores.argmax(dim=1)
                    ]
                else:
                    choice = scores[:, [kids.index(c) for c in inner]].argmax(dim=1)
                    next_node[rows] = torch.tensor(inner, device=device)[choice]
        steps.append(step)
        node = next_node
    return torch.stack(steps, dim=1), terminal


# ---------------------------------------------------------------- curves


def threshold_curve(table: ExitTable, name: str, paired_points: int = 0) -> list[dict[str, Any]]:
    """The policy's points over thresholds at the quantiles of the certainties seen.

    ``paired_points`` of them, evenly spread along the curve, also carry the per-example
    correctness (``correct_bits``), so another network can be compared with this one
    example by example (McNemar) at matched mean MACs without rerunning it.
    """
    steps = table.steps[name]
    measure = table.measure[name].gather(1, steps.clamp_min(0))[steps >= 0]
    quantiles = np.quantile(measure.numpy(), np.linspace(0, 1, CURVE_POINTS))
    thresholds = sorted({0.0, 1.0, *(float(np.clip(q, 0, 1)) for q in quantiles)})
    paired = set()
    if paired_points > 0:
        paired = {round(i) for i in np.linspace(0, len(thresholds) - 1, paired_points)}
    points = []
    for i, threshold in enumerate(thresholds):
        positions = table.exits(Policy(name, threshold))
        point = {"threshold": threshold, **table.point(positions, "threshold")}
        if i in paired:
            point["correct_bits"] = pack_bits(table.correctness(positions))
        points.append(point)
    return points


def single_exit_points(table: ExitTable, names: Sequence[str]) -> list[dict[str, Any]]:
    """Every example leaves at one exit: static routing on the trained exits."""
    n = len(table.labels)
    return [
        {
            "exit": name,
            **table.point(torch.full((n,), k, dtype=torch.long), "oracle"),
        }
        for k, name in enumerate(names)
    ]


def oracle_curve(table: ExitTable) -> list[dict[str, Any]]:
    """The cheapest mean MACs at each accuracy up to the oracle's.

    Each example costs its cheapest correct exit; below the oracle's accuracy the
    examples whose correct answer is dearest are sent to the cheapest exit instead.
    """
    macs = table.leaf_macs["oracle"].double()
    cheapest = float(macs.min())
    dear = torch.where(table.correct, macs, torch.full_like(macs, math.inf)).min(dim=1).values
    right = torch.isfinite(dear)
    extra = (dear[right] - cheapest).sort(descending=True).values
    n = len(table.labels)
    base = n * cheapest
    total = base + float(extra.sum())
    points = [{"accuracy": int(right.sum()) / n, "mean_macs": total / n}]
    steps = max(1, len(extra) // 100)
    dropped = 0.0
    for k in range(0, len(extra), steps):
        dropped += float(extra[k : k + steps].sum())
        points.append(
            {"accuracy": (int(right.sum()) - min(k + steps, len(extra))) / n,
             "mean_macs": (total - dropped) / n}
        )  # fmt: skip
    return sorted(points, key=lambda p: p["mean_macs"])


def matched_threshold(
    table: ExitTable, name: str, macs: float
) -> tuple[Policy, dict[str, float], torch.Tensor]:
    """The threshold whose mean MACs come closest to ``macs``; its point and correctness."""
    best = min(threshold_curve(table, name), key=lambda p: abs(p["mean_macs"] - macs))
    policy = Policy(name, best["threshold"])
    positions = table.exits(policy)
    return policy, table.point(positions, "threshold"), table.correctness(positions)


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
    table = exit_table(tree, images_t, labels_t, k_values[0], batch_size)
    names = [tree.nodes[leaf].name for leaf in table.leaves]
    position = {leaf: k for k, leaf in enumerate(table.leaves)}
    oracle = oracle_curve(table)
    single = single_exit_points(table, names)
    # Per-example bits on the confidence curve only: the paired claims compare against it.
    curves = {
        name: threshold_curve(table, name, paired_points if name == "confidence" else 0)
        for name in ("confidence", "entropy")
    }
    learned = []
    for k, exits in zip(k_values, learned_exits(tree, images_t, k_values, batch_size), strict=True):
        positions = torch.tensor([position[int(e)] for e in exits.tolist()])
        point = {"k_cpt": k, **table.point(positions, "learned")}
        correct = table.correctness(positions)
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
