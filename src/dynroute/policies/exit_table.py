"""What every exit answers on a split, from one dense pass: the table every policy is
replayed on, for any parameter, without running the network again.

``dense_outputs`` runs the tree once over a split and keeps every exit's logits and every
router's scores. An ``ExitTable`` turns them into one kind of answers (raw, calibrated or
combined: ``dynroute.core.policy``), whether each is right, and the path an example takes
among non-exit sinks when no exit stops it. ``ExitTable.exits`` then replays any exit rule
on those answers through the same ``dynroute.core.decisions.Decider`` the engine and the export
runtime decide with (tests check it against ``predict_dense`` on random trees), so a curve
of thousands of thresholds costs one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dynroute.core.decisions import Decider, Shape, certainty, passes, path_macs
from dynroute.core.policy import Policy
from dynroute.core.probabilities import log_softmax_all
from dynroute.nn.macs import tree_costs
from dynroute.nn.prediction import as_tensor
from dynroute.nn.tree import RoutedTree, evaluation_mode

#: The answers a table of raw exits reads (no fitted parameters).
RAW = Policy("confidence", 0.5)


@dataclass
class DenseOutputs:
    """One dense pass over a split: every exit's logits (N, leaves, classes), every
    junction's router scores and the labels, as NumPy arrays."""

    logits: np.ndarray
    scores: dict[int, np.ndarray]
    labels: np.ndarray

    def subset(self, rows: np.ndarray) -> DenseOutputs:
        """The examples ``rows`` (an index or boolean array)."""
        return DenseOutputs(
            self.logits[rows], {j: s[rows] for j, s in self.scores.items()}, self.labels[rows]
        )

    def __len__(self) -> int:
        return len(self.labels)


def dense_outputs(
    tree: RoutedTree,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k_cpt: float | None = None,
    batch_size: int = 500,
) -> DenseOutputs:
    """Every exit's answer and every router's scores for a split (one dense pass)."""
    images = as_tensor(images, torch.float32)
    labels_t = as_tensor(labels, torch.long)
    device = next(tree.parameters()).device
    logits: list[np.ndarray] = []
    scores: dict[int, list[np.ndarray]] = {j: [] for j in tree.junctions}
    with evaluation_mode(tree), torch.inference_mode():
        for start in range(0, len(labels_t), batch_size):
            out = tree.forward_dense(images[start : start + batch_size].to(device), k_cpt)
            stacked = torch.stack([out.logits[leaf].float() for leaf in tree.leaves], 1)
            logits.append(stacked.cpu().numpy())
            for j in tree.junctions:
                scores[j].append(out.scores[j].float().cpu().numpy())
    empty = np.zeros((0, len(tree.leaves), tree.num_classes), np.float32)
    return DenseOutputs(
        np.concatenate(logits) if logits else empty,
        {j: np.concatenate(parts) for j, parts in scores.items() if parts},
        labels_t.numpy(),
    )


@dataclass(frozen=True)
class TreeFacts:
    """What a table needs of a tree besides its outputs: structure, classes, path costs."""

    shape: Shape
    classes: int
    base_macs: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, tree: RoutedTree) -> TreeFacts:
        return cls(tree.shape, tree.num_classes, tree_costs(tree).base_path_macs())

    def leaf_macs(self, policy: Policy) -> np.ndarray:
        """Per exit (leaf order), what an example leaving there costs under ``policy``
        (it depends on the rule's cost model, the answers and the scheduler: cached)."""
        key = (policy.cost_model, policy.answers, id(policy.scheduler))
        cache = self.__dict__.setdefault("_leaf_macs", {})
        if key not in cache:  # the scheduler is kept with its entry, so its id stays its own
            macs = path_macs(policy, self.shape, self.classes, self.base_macs)
            leaf_macs = np.asarray([macs[leaf] for leaf in self.shape.leaves], dtype=np.float64)
            cache[key] = (policy.scheduler, leaf_macs)
        return cache[key][1]


@dataclass
class ExitTable:
    """Per example of one split: every exit's answer under one kind of answers, whether it
    is right, and the exits a threshold policy may stop at along the routers' path.

    ``candidates`` (N, depth, width): at each junction on that path, the exits it offers
    (leaf positions, -1 for none); ``terminal`` (N,): where an example ends if no exit on
    the path stops it. ``answers`` is the policy whose answers (and their parameters) the
    table holds; tables of raw answers hold ``RAW``.
    """

    facts: TreeFacts
    answers: Policy
    outputs: DenseOutputs
    answer: np.ndarray
    correct: np.ndarray
    candidates: np.ndarray
    terminal: np.ndarray
    _measures: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    _offered: dict[Any, np.ndarray] = field(default_factory=dict, repr=False)
    #: The schedulers whose ids key the caches, kept alive so no other object takes an id.
    _keep: list[Any] = field(default_factory=list, repr=False)

    @property
    def labels(self) -> np.ndarray:
        return self.outputs.labels

    def __len__(self) -> int:
        return len(self.outputs.labels)

    def _check_answers(self, policy: Policy) -> None:
        if policy.answers != self.answers.answers or (
            policy.answers != "raw"
            and policy.weights is not self.answers.weights
            and (policy.weights, policy.biases) != (self.answers.weights, self.answers.biases)
        ):
            raise ValueError(f"a {policy.describe()} policy replayed on another table's answers")

    def decider(self, policy: Policy) -> Decider:
        self._check_answers(policy)
        return Decider(policy, self.facts.shape, self.facts.classes)

    def _key(self, policy: Policy) -> tuple[str, int]:
        if policy.scheduler is not None and not any(k is policy.scheduler for k in self._keep):
            self._keep.append(policy.scheduler)
        return (policy.name, id(policy.scheduler))

    def measures(self, policy: Policy) -> np.ndarray:
        """(N, leaves) float32: the rule's measure of every exit's answer (cached)."""
        key = self._key(policy)
        if key not in self._measures:
            rule = self.decider(policy)
            shape = self.facts.shape
            own = log_softmax_all(self.outputs.logits) if rule.needs_history else None
            columns = []
            for position, leaf in enumerate(shape.leaves):
                passed = [shape.leaf_position[c] for c in shape.history[leaf]]
                history = own[:, passed] if own is not None and passed else None
                columns.append(rule.measure(position, history, self.answer[:, position]))
            n = len(self)
            self._measures[key] = np.stack(columns, 1) if columns else np.zeros((n, 0), np.float32)
        return self._measures[key]

    def with_measures(self, policy: Policy, measures: np.ndarray) -> ExitTable:
        """The same table with ``measures`` standing for ``policy``'s (cross-fitted ones)."""
        key = self._key(policy)
        return replace(
            self, _measures={**self._measures, key: measures}, _offered={}, _keep=[*self._keep]
        )

    def _offered_measures(self, policy: Policy) -> np.ndarray:
        """(N, depth, width): the measure of each exit offered along the path (cached)."""
        key = self._key(policy)
        if key not in self._offered:
            n, depth, width = self.candidates.shape
            measure = self.measures(policy)
            positions = np.where(self.candidates >= 0, self.candidates, 0).reshape(n, -1)
            values = np.take_along_axis(measure, positions, 1)
            self._offered[key] = values.reshape(n, depth, width)
        return self._offered[key]

    def exits(self, policy: Policy) -> np.ndarray:
        """Position (in leaf order) of each example's exit under an exit rule, exactly as
        ``Decider.choose`` decides junction by junction (the routers: as they choose)."""
        self._check_answers(policy)
        if not policy.uses_threshold:  # the routers choose
            rule = self.decider(policy)
            exits = rule.reached_exits(rule.dense_choices({}, self.outputs.scores), len(self))
            where = self.facts.shape.leaf_position
            return np.asarray([where[int(e)] for e in exits], dtype=np.int64)
        n, depth, width = self.candidates.shape
        if depth == 0:
            return self.terminal.copy()
        values = self._offered_measures(policy)
        valid = self.candidates >= 0
        positions = np.where(valid, self.candidates, 0)
        passing = passes(policy, values, positions) & valid
        if width == 1:
            stops, chosen = passing[:, :, 0], positions[:, :, 0]
        else:
            sure = np.where(passing, certainty(policy, values), np.float32(-np.inf))
            best = sure.argmax(axis=2)
            chosen = np.take_along_axis(positions, best[:, :, None], 2)[:, :, 0]
            stops = passing.any(axis=2)
        first = stops.argmax(axis=1)
        rows = np.arange(n)
        return np.where(stops.any(axis=1), chosen[rows, first], self.terminal)

    def exits_for_thresholds(self, policy: Policy, thresholds: np.ndarray) -> np.ndarray | None:
        """(N, len(thresholds)) exit positions of a single-threshold rule at each threshold
        at once, where every junction offers one exit (else None: replay each with
        ``exits``). The same float32 comparisons as ``exits``: an example leaves at the first
        offered exit whose measure passes."""
        self._check_answers(policy)
        n, depth, width = self.candidates.shape
        if width != 1 or policy.thresholds is not None or not policy.uses_threshold:
            return None
        values = self._offered_measures(policy)[:, :, 0]
        valid = self.candidates[:, :, 0] >= 0
        sign = np.float32(-1.0) if policy.rule.passes_below else np.float32(1.0)
        level = np.where(valid, sign * values, np.float32(-np.inf))  # passes: level >= t
        best = np.maximum.accumulate(level, axis=1)  # the best seen up to each depth
        t = sign * np.asarray(thresholds, dtype=np.float32)
        chosen = np.where(valid, self.candidates[:, :, 0], -1)
        out = np.empty((n, len(t)), dtype=np.int64)
        step = max(1, int(2e7 // max(1, n * depth)))
        for start in range(0, len(t), step):
            block = t[start : start + step]
            first = (best[:, :, None] < block[None, None, :]).sum(axis=1)  # depths passed by
            reached = first < depth
            picked = np.take_along_axis(chosen, np.minimum(first, depth - 1), axis=1)
            out[:, start : start + step] = np.where(reached, picked, self.terminal[:, None])
        return out

    def subset(self, rows: np.ndarray) -> ExitTable:
        """The table's examples ``rows`` (same answers, same paths)."""
        return replace(
            self,
            outputs=self.outputs.subset(rows),
            answer=self.answer[rows],
            correct=self.correct[rows],
            candidates=self.candidates[rows],
            terminal=self.terminal[rows],
            _measures={},
            _offered={},
            _keep=[],
        )

    def correctness(self, positions: np.ndarray) -> np.ndarray:
        return self.correct[np.arange(len(self)), positions]

    def point(self, positions: np.ndarray, policy: Policy) -> dict[str, float]:
        """Accuracy and mean MACs when example i leaves at exit ``positions[i]``."""
        macs = self.facts.leaf_macs(policy)[positions]
        return {
            "accuracy": float(self.correctness(positions).mean()) if len(self) else 0.0,
            "mean_macs": float(macs.mean()) if len(self) else 0.0,
        }

    def oracle_macs(self) -> np.ndarray:
        """Per exit, its path's MACs with nothing spent on deciding (the oracle's cost)."""
        macs = self.facts.base_macs["oracle"]
        return np.asarray([macs[leaf] for leaf in self.facts.shape.leaves], dtype=np.float64)


def exit_table(
    tree: RoutedTree | TreeFacts,
    outputs: DenseOutputs,
    answers: Policy = RAW,
) -> ExitTable:
    """The table of ``outputs`` under ``answers``' kind of answers (raw by default)."""
    facts = tree if isinstance(tree, TreeFacts) else TreeFacts.of(tree)
    shape = facts.shape
    template = replace(answers, name="confidence", threshold=0.5, thresholds=None, scheduler=None)
    rule = Decider(template, shape, facts.classes)
    raw = {leaf: outputs.logits[:, k] for k, leaf in enumerate(shape.leaves)}
    by_leaf, _ = rule.every_exit(raw) if len(outputs) else ({}, {})
    n = len(outputs)
    if by_leaf:
        answer = np.stack([by_leaf[leaf] for leaf in shape.leaves], 1)
    else:
        answer = np.zeros((n, len(shape.leaves), facts.classes), np.float32)
    correct = answer.argmax(axis=2) == outputs.labels[:, None]
    candidates, terminal = _route(shape, outputs.scores, n)
    return ExitTable(facts, template, outputs, answer, correct, candidates, terminal)


def _route(shape: Shape, scores: dict[int, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the exits each junction on the routers' path offers (where nothing
    stops the example: the one non-exit sink, or the router's pick among several), and the
    exit it ends at then."""
    where = shape.leaf_position
    width = max([sum(shape.is_leaf(c) for c in shape.children[j]) for j in shape.junctions] or [1])
    node = np.zeros(n, dtype=np.int64)
    terminal = np.full(n, -1, dtype=np.int64)
    steps: list[np.ndarray] = []
    for _ in range(len(shape.parent)):
        active = terminal < 0
        if not active.any():
            break
        step = np.full((n, width), -1, dtype=np.int64)
        next_node = node.copy()
        for index in np.unique(node[active]).tolist():
            rows = (node == index) & active
            if shape.is_leaf(index):  # reached as a single sink
                terminal[rows] = where[index]
                continue
            kids = shape.children[index]
            exits = [c for c in kids if shape.is_leaf(c)]
            inner = [c for c in kids if not shape.is_leaf(c)]
            if exits and len(kids) >= 2:
                step[rows, : len(exits)] = [where[c] for c in exits]
            if len(kids) == 1:
                next_node[rows] = kids[0]
            elif len(inner) == 1:
                next_node[rows] = inner[0]
            else:
                junction_scores = scores[index][rows]
                if not inner:  # only exits: the router picks where to end
                    choice = junction_scores.argmax(axis=1)
                    terminal[rows] = np.asarray([where[c] for c in kids])[choice]
                else:
                    columns = [kids.index(c) for c in inner]
                    choice = junction_scores[:, columns].argmax(axis=1)
                    next_node[rows] = np.asarray(inner)[choice]
        if (step >= 0).any():
            steps.append(step)
        node = next_node
    candidates = np.stack(steps, 1) if steps else np.zeros((n, 0, width), dtype=np.int64)
    return candidates, terminal


def family(table: ExitTable, policies: Sequence[Policy]) -> list[tuple[Policy, np.ndarray]]:
    """(policy, exit positions) for each policy replayed on ``table``."""
    return [(policy, table.exits(policy)) for policy in policies]
