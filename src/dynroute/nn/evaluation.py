"""Hard-routing statistics over a data set: where examples go, what each exit gets right.

``routing_statistics`` runs a predictor (the dense reference by default) over a whole data set in
batches and returns plain, JSON-serialisable statistics for logs, reports and plots. The
trainer evaluates with it as it trains; ``dynroute.engine.evaluate`` plugs in the
early-exit engine, which returns the same numbers with less work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dynroute.core.policy import LEARNED, Policy
from dynroute.nn.macs import policy_path_macs, tree_costs
from dynroute.nn.prediction import (
    Prediction,
    as_tensor,
    check_images,
    predict_dense,
    predict_from_outputs,
)
from dynroute.nn.tree import RoutedTree, evaluation_mode

#: ``predictor(images, k_cpt, labels) -> Prediction`` for one batch.
Predictor = Callable[[torch.Tensor, Any, torch.Tensor], Prediction]


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


class _Tally:
    """What one evaluation counts, batch by batch: nodes reached, examples classified per
    node and class, correct answers per node, MACs spent."""

    def __init__(self, tree: RoutedTree, device: torch.device) -> None:
        n_nodes, n_classes = len(tree.nodes), tree.num_classes
        self.reached = torch.zeros(n_nodes, dtype=torch.long, device=device)
        self.counts = torch.zeros(n_nodes, n_classes, dtype=torch.long, device=device)
        self.correct = torch.zeros(n_nodes, dtype=torch.long, device=device)
        self.path_nodes = tree_costs(tree).path_matrix().to(device)
        self.total_macs = torch.zeros((), dtype=torch.long, device=device)

    def add(self, pred: Any, y: torch.Tensor) -> None:
        self.reached += self.path_nodes[pred.exits].sum(dim=0)
        self.counts.index_put_((pred.exits, y), torch.ones_like(y), accumulate=True)
        hits = pred.exits[pred.predictions == y]
        self.correct += torch.bincount(hits, minlength=len(self.correct))
        self.total_macs += pred.macs.sum()

    def result(self, tree: RoutedTree, k_cpt: float | None, policy: Policy) -> Evaluation:
        return _summarise(
            tree,
            self.reached.tolist(),
            self.counts.tolist(),
            self.correct.tolist(),
            int(self.total_macs),
            k_cpt,
            policy,
        )


def _inputs(
    tree: RoutedTree, images: Any, labels: Any, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    images = as_tensor(images, torch.float32)
    labels = as_tensor(labels, torch.long)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if device is not None:
        tree.to(device)
    return images, labels, next(tree.parameters()).device


def routing_statistics(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    k_cpt: float | None = None,
    progress: bool = False,
    policy: Policy = LEARNED,
    predictor: Predictor | None = None,
) -> Evaluation:
    """Evaluate ``tree`` routed by ``policy`` on (N, C, H, W) ``images`` and ``labels``.

    ``device`` defaults to the tree's own; given, the tree is moved there. Each batch is
    predicted by ``predictor(x, k_cpt, labels)`` (``dynroute.engine.evaluate`` passes the
    early-exit engine), else by the dense reference. The tree's training mode is restored
    afterwards.
    """
    images, labels, device = _inputs(tree, images, labels, device)
    tally = _Tally(tree, device)
    starts = range(0, images.shape[0], batch_size)
    with evaluation_mode(tree), torch.inference_mode():
        for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            if predictor is not None:
                pred = predictor(x, k_cpt, y)
            else:
                pred = predict_dense(tree, x, k_cpt, policy=policy, labels=y)
            tally.add(pred, y)
    return tally.result(tree, k_cpt, policy)


def routing_statistics_by_k(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k_values: list[float],
    batch_size: int = 500,
) -> list[Evaluation]:
    """``routing_statistics`` of a dynamic-k_cpt net under its routers at every k_cpt of
    ``k_values``, each batch's columns and exits run once and only the routers per value
    (``RoutedTree.forward_dense_by_k``): the same numbers, one dense pass instead of one
    per value."""
    images, labels, device = _inputs(tree, images, labels, None)
    tallies = [_Tally(tree, device) for _ in k_values]
    with evaluation_mode(tree), torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            y = labels[start : start + batch_size].to(device)
            x = check_images(images[start : start + batch_size], tree.input_shape, torch.float32)
            x = x.to(device)
            for tally, out in zip(tallies, tree.forward_dense_by_k(x, k_values), strict=True):
                tally.add(predict_from_outputs(tree, out, x), y)
    return [tally.result(tree, k, LEARNED) for tally, k in zip(tallies, k_values, strict=True)]


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
    macs = tree_costs(tree).node_macs
    path_macs = policy_path_macs(tree, policy)
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
