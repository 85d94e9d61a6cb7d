"""Hard-routing evaluation: where examples go, what each exit gets right, MACs.

``predict_dense`` is the reference: it evaluates every node on every example
(``RoutedTree.forward_dense``) and reads the routing off the policy's decision at every
junction (``dynroute.infer.policies``) and ``arrival_probabilities``. ``evaluate`` runs
it (or the early-exit engine, which must agree) over a whole data set in batches and
returns plain, JSON-serialisable statistics for reports and plots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dynroute.errors import DynrouteError
from dynroute.infer.engine import EarlyExitEngine
from dynroute.infer.policies import LEARNED, Policy, junction_choice, oracle_exits
from dynroute.infer.prediction import Prediction, check_images
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import RoutedTree, evaluation_mode


def predict_dense(
    tree: RoutedTree,
    x: torch.Tensor,
    k_cpt: torch.Tensor | float | None = None,
    policy: Policy = LEARNED,
    labels: torch.Tensor | None = None,
) -> Prediction:
    """The reference prediction for one batch under ``policy``: every node runs on every
    example, then each junction's decision is read off the outputs.

    ``labels`` are needed by the oracle policy only. Per-example MACs are what the policy
    pays for the path to the exit taken. The tree should be in eval mode.
    """
    with torch.inference_mode():
        weight = next(tree.parameters())
        x = check_images(x, tree.input_shape, weight.dtype).to(weight.device)
        out = tree.forward_dense(x, k_cpt)
        n = x.shape[0]
        leaves = tree.leaves
        costs = tree_costs(tree)
        path_macs = torch.tensor(costs.policy_path_macs(policy.cost_model), device=x.device)
        if policy.name == "oracle":
            if labels is None:
                raise DynrouteError("the oracle policy needs the labels")
            leaf_macs = [costs.oracle_path_macs[leaf] for leaf in leaves]
            exits = oracle_exits(out.logits, labels.to(x.device), leaves, leaf_macs)
            logits = torch.stack([out.logits[i] for i in leaves], dim=1)[
                torch.arange(n, device=x.device), _positions(leaves, exits)
            ]
            return Prediction(logits, exits, path_macs[exits])
        branches = {
            j: nn.functional.one_hot(
                junction_choice(
                    tree,
                    j,
                    policy,
                    out.scores.get(j),
                    {c: out.logits[c] for c in tree.children_of[j] if c in out.logits},
                ),
                len(tree.children_of[j]),
            ).to(x.dtype)
            for j in tree.junctions
        }
        arrival = tree.arrival_probabilities(branches, n, x)
        reached = torch.stack(arrival, dim=1) > 0.5
        leaf_logits = torch.stack([out.logits[i] for i in leaves], dim=1)
        leaf_position = reached[:, leaves].to(torch.uint8).argmax(dim=1)
        logits = leaf_logits[torch.arange(n, device=x.device), leaf_position]
        exits = torch.tensor(leaves, device=x.device)[leaf_position]
        if policy.name == "learned":  # summed node by node: independent of the path table
            node_macs = torch.tensor(costs.node_macs, dtype=torch.long, device=x.device)
            macs = (reached.long() * node_macs).sum(dim=1)
        else:
            macs = path_macs[exits]
    return Prediction(logits, exits, macs)


def _positions(leaves: list[int], exits: torch.Tensor) -> torch.Tensor:
    """Index of each example's exit within ``leaves``."""
    lookup = torch.full((max(leaves) + 1,), -1, dtype=torch.long, device=exits.device)
    lookup[torch.tensor(leaves, device=exits.device)] = torch.arange(
        len(leaves), device=exits.device
    )
    return lookup[exits]


@dataclass
class NodeStatistics:
    """One node's share of the traffic and, for exits, of the classifications.

    ``macs`` is the node's own cost (transform and router), ``path_macs`` that
    of every node from the root to it inclusive.
    """

    index: int
    name: str
    parent: int
    is_leaf: bool
    macs: int
    path_macs: int
    reached: float
    classified: float
    accuracy: float | None
    class_counts: list[int]


@dataclass
class Evaluation:
    """Hard-routing statistics over a data set; ``to_dict`` gives plain JSON data."""

    num_examples: int
    accuracy: float
    mean_macs: float
    k_cpt: float | None
    nodes: list[NodeStatistics]
    policy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_tensor(data: Any, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` from an array or tensor (memory maps are copied, not shared)."""
    if isinstance(data, np.ndarray):
        # Datasets are read-only memory maps: copy into memory torch may own.
        return torch.from_numpy(np.array(data, copy=not data.flags.writeable)).to(dtype)
    return torch.as_tensor(data).to(dtype)


def evaluate(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    k_cpt: float | None = None,
    method: Literal["dense", "engine"] = "dense",
    progress: bool = False,
    policy: Policy = LEARNED,
) -> Evaluation:
    """Evaluate ``tree`` routed by ``policy`` on (N, C, H, W) ``images`` and ``labels``.

    ``device`` defaults to the tree's own; given, the tree is moved there.
    ``method="engine"`` runs only the nodes each example reaches (same
    results, less work; not for the oracle, which needs every exit's answer).
    The tree's training mode is restored afterwards.
    """
    images = as_tensor(images, torch.float32)
    labels = as_tensor(labels, torch.long)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if device is not None:
        tree.to(device)
    device = next(tree.parameters()).device
    n_nodes, n_classes = len(tree.nodes), tree.num_classes
    reached = torch.zeros(n_nodes, dtype=torch.long, device=device)
    counts = torch.zeros(n_nodes, n_classes, dtype=torch.long, device=device)
    correct = torch.zeros(n_nodes, dtype=torch.long, device=device)
    path_nodes = tree_costs(tree).path_matrix().to(device)
    total_macs = torch.zeros((), dtype=torch.long, device=device)
    starts = range(0, images.shape[0], batch_size)
    if method == "engine" and not policy.deployable:
        method = "dense"  # the oracle reads every exit's answer: there is nothing to skip
    with evaluation_mode(tree), torch.inference_mode():
        engine = EarlyExitEngine(tree, policy=policy) if method == "engine" else None
        for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            if engine is not None:
                pred = engine(x, k_cpt)
            else:
                pred = predict_dense(tree, x, k_cpt, policy=policy, labels=y)
            reached += path_nodes[pred.exits].sum(dim=0)
            counts.index_put_((pred.exits, y), torch.ones_like(y), accumulate=True)
            hits = pred.exits[pred.predictions == y]
            correct += torch.bincount(hits, minlength=n_nodes)
            total_macs += pred.macs.sum()
    return _summarise(
        tree, reached.tolist(), counts.tolist(), correct.tolist(), int(total_macs), k_cpt, policy
    )


def every_exit_accuracy(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 500,
    k_cpt: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Accuracy of every exit as if all examples left there, overall and per class.

    Routing is ignored: this shows what each classifier has learnt, e.g. whether
    deep exits were starved of the examples the routers sent out early.
    """
    images = as_tensor(images, torch.float32)
    labels = as_tensor(labels, torch.long)
    device = next(tree.parameters()).device
    leaves, n_classes = tree.leaves, tree.num_classes
    correct = torch.zeros(len(leaves), n_classes, dtype=torch.long)
    totals = torch.bincount(labels, minlength=n_classes)
    with evaluation_mode(tree), torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size]
            out = tree.forward_dense(x, k_cpt)
            for row, leaf in enumerate(leaves):
                hit = out.logits[leaf].argmax(dim=1).cpu() == y
                correct[row] += torch.bincount(y[hit], minlength=n_classes)
    n = max(int(totals.sum()), 1)
    return {
        tree.nodes[leaf].name: {
            "accuracy": int(correct[row].sum()) / n,
            "class_accuracy": [
                c / t if t else None
                for c, t in zip(correct[row].tolist(), totals.tolist(), strict=True)
            ],
        }
        for row, leaf in enumerate(leaves)
    }


def _summarise(
    tree: RoutedTree,
    reached: list[int],
    counts: list[list[int]],
    correct: list[int],
    total_macs: int,
    k_cpt: float | None,
    policy: Policy,
) -> Evaluation:
    total = sum(sum(row) for row in counts)
    share = (lambda c: c / total) if total else (lambda c: 0.0)
    costs = tree_costs(tree)
    macs = costs.node_macs
    path_macs = costs.policy_path_macs(policy.cost_model)
    nodes = []
    for i, node in enumerate(tree.nodes):
        classified = sum(counts[i])
        nodes.append(
            NodeStatistics(
                index=i,
                name=node.name,
                parent=tree.parent[i],
                is_leaf=node.is_leaf,
                macs=int(macs[i]),
                path_macs=int(path_macs[i]),
                reached=share(reached[i]),
                classified=share(classified),
                accuracy=correct[i] / classified if classified else None,
                class_counts=counts[i],
            )
        )
    return Evaluation(
        num_examples=total,
        accuracy=share(sum(correct)),
        mean_macs=total_macs / total if total else 0.0,
        k_cpt=None if k_cpt is None else float(k_cpt),
        nodes=nodes,
        policy=None if policy == LEARNED else policy.to_dict(),
    )
