"""Hard-routing evaluation: where examples go, what each exit gets right, MACs.

``predict_dense`` is the reference: it evaluates every node on every example
(``RoutedTree.forward_dense``) and reads the hard (argmax) routing off
``hard_branches`` / ``arrival_probabilities``. ``evaluate`` runs it (or the
early-exit engine, which must agree) over a whole data set in batches and
returns plain, JSON-serialisable statistics for reports and plots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from dynroute.infer.engine import EarlyExitEngine
from dynroute.infer.prediction import Prediction
from dynroute.nn.tree import RoutedTree


def predict_dense(
    tree: RoutedTree, x: torch.Tensor, k_cpt: torch.Tensor | float | None = None
) -> Prediction:
    """The reference hard-routing prediction for one batch: every node runs on every example.

    Per-example MACs are summed over the nodes each example reaches, independently
    of the engine's path lookup. The tree should be in eval mode.
    """
    with torch.inference_mode():
        out = tree.forward_dense(x, k_cpt)
        n = x.shape[0]
        arrival = tree.arrival_probabilities(tree.hard_branches(out.scores), n, x)
        reached = torch.stack(arrival, dim=1) > 0.5
        leaves = tree.leaves
        leaf_logits = torch.stack([out.logits[i] for i in leaves], dim=1)
        leaf_position = reached[:, leaves].to(torch.uint8).argmax(dim=1)
        logits = leaf_logits[torch.arange(n, device=x.device), leaf_position]
        exits = torch.tensor(leaves, device=x.device)[leaf_position]
        node_macs = torch.tensor(tree.node_macs(), dtype=torch.long, device=x.device)
        macs = (reached.long() * node_macs).sum(dim=1)
    return Prediction(logits, exits, macs)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_tensor(data: Any, dtype: torch.dtype) -> torch.Tensor:
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
) -> Evaluation:
    """Evaluate ``tree`` with hard routing on (N, C, H, W) ``images`` and ``labels``.

    ``device`` defaults to the tree's own; given, the tree is moved there.
    ``method="engine"`` runs only the nodes each example reaches (same
    results, less work). The tree's training mode is restored afterwards.
    """
    images = _as_tensor(images, torch.float32)
    labels = _as_tensor(labels, torch.long)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if device is not None:
        tree.to(device)
    device = next(tree.parameters()).device
    n_nodes, n_classes = len(tree.nodes), tree.num_classes
    reached = torch.zeros(n_nodes, dtype=torch.long, device=device)
    counts = torch.zeros(n_nodes, n_classes, dtype=torch.long, device=device)
    correct = torch.zeros(n_nodes, dtype=torch.long, device=device)
    path_nodes = _path_matrix(tree).to(device)
    was_training = tree.training
    tree.eval()
    engine = EarlyExitEngine(tree) if method == "engine" else None
    starts = range(0, images.shape[0], batch_size)
    try:
        with torch.inference_mode():
            for start in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
                x = images[start : start + batch_size].to(device)
                y = labels[start : start + batch_size].to(device)
                pred = engine(x, k_cpt) if engine else predict_dense(tree, x, k_cpt)
                reached += path_nodes[pred.exits].sum(dim=0)
                counts.index_put_((pred.exits, y), torch.ones_like(y), accumulate=True)
                hits = pred.exits[pred.predictions == y]
                correct += torch.bincount(hits, minlength=n_nodes)
    finally:
        tree.train(was_training)
    return _summarise(tree, reached.tolist(), counts.tolist(), correct.tolist(), k_cpt)


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
    images = _as_tensor(images, torch.float32)
    labels = _as_tensor(labels, torch.long)
    device = next(tree.parameters()).device
    leaves, n_classes = tree.leaves, tree.num_classes
    correct = torch.zeros(len(leaves), n_classes, dtype=torch.long)
    totals = torch.bincount(labels, minlength=n_classes)
    was_training = tree.training
    tree.eval()
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device)
                y = labels[start : start + batch_size]
                out = tree.forward_dense(x, k_cpt)
                for row, leaf in enumerate(leaves):
                    hit = out.logits[leaf].argmax(dim=1).cpu() == y
                    correct[row] += torch.bincount(y[hit], minlength=n_classes)
    finally:
        tree.train(was_training)
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


def _path_matrix(tree: RoutedTree) -> torch.Tensor:
    """(nodes, nodes) 0/1 matrix: row ``leaf`` marks the nodes on its root path."""
    matrix = torch.zeros(len(tree.nodes), len(tree.nodes), dtype=torch.long)
    for leaf in tree.leaves:
        matrix[leaf, tree.path_to(leaf)] = 1
    return matrix


def _summarise(
    tree: RoutedTree,
    reached: list[int],
    counts: list[list[int]],
    correct: list[int],
    k_cpt: float | None,
) -> Evaluation:
    total = sum(sum(row) for row in counts)
    share = (lambda c: c / total) if total else (lambda c: 0.0)
    macs = tree.node_macs()
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
                path_macs=int(tree.path_macs(i)),
                reached=share(reached[i]),
                classified=share(classified),
                accuracy=correct[i] / classified if classified else None,
                class_counts=counts[i],
            )
        )
    mean_macs = sum(r * m for r, m in zip(reached, macs, strict=True)) / total if total else 0.0
    return Evaluation(
        num_examples=total,
        accuracy=share(sum(correct)),
        mean_macs=float(mean_macs),
        k_cpt=None if k_cpt is None else float(k_cpt),
        nodes=nodes,
    )
