"""The exit rules carried out, in NumPy: one implementation for every place that decides.

The PyTorch engine and dense reference (``dynroute.engine``, ``dynroute.nn.prediction``),
the torch-free export runtime (``dynroute.deploy``) and the policy tables
(``dynroute.policies``) all decide through a ``Decider``, so they cannot disagree:

1. ``answer``: what an exit says under the policy's answers (its raw logits, or its
   log-softmax scaled, combined with the exits the example passed, and shifted by a bias
   per class);
2. ``measure``: the rule's number for that answer (``dynroute.core.rules``: each rule's file
   says how it measures an answer);
3. ``passes``: whether the measure is enough to stop there (a threshold, or one per exit,
   passed from above or below as the rule says);
4. ``choose``: at a junction, the most certain passing exit takes the example; otherwise
   it goes on to the one non-exit sink, or to the one the router prefers among several.

Everything is float32 where a threshold compares, so the same inputs give the same exits
whichever caller runs them. ``Shape`` is a tree's structure without torch (parents and
sinks), which the costs of a policy's decisions are counted on (``path_macs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy
from dynroute.core.probabilities import log_softmax

# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Shape:
    """A routed tree's structure: each node's parent (-1 for the root) and its sinks, in
    pre-order, and how its exits' answers build on each other (``boost``: ``boosted``).
    ``RoutedTree.shape`` and an export's manifest both give one."""

    parent: tuple[int, ...]
    children: tuple[tuple[int, ...], ...]
    boost: float = 0.0

    @cached_property
    def leaves(self) -> list[int]:
        return [i for i, kids in enumerate(self.children) if not kids]

    @cached_property
    def junctions(self) -> list[int]:
        return [i for i, kids in enumerate(self.children) if len(kids) >= 2]

    @cached_property
    def leaf_position(self) -> dict[int, int]:
        return {leaf: k for k, leaf in enumerate(self.leaves)}

    def is_leaf(self, node: int) -> bool:
        return not self.children[node]

    def path_to(self, node: int) -> list[int]:
        """Nodes from the root to ``node``, both included."""
        path = [node]
        while self.parent[path[-1]] >= 0:
            path.append(self.parent[path[-1]])
        return path[::-1]

    @cached_property
    def history(self) -> dict[int, list[int]]:
        """Per leaf, the exits an example has passed before reaching it, in path order: the
        leaf sinks of every junction above it (its own junction's excluded). Combined
        answers and the scheduler read them."""
        out = {}
        for leaf in self.leaves:
            parent = self.parent[leaf]
            above = self.path_to(parent) if parent >= 0 else []
            out[leaf] = [
                c
                for n in above
                if len(self.children[n]) >= 2 and leaf not in self.children[n]
                for c in self.children[n]
                if self.is_leaf(c)
            ]
        return out

    def decided_at_junction(self, leaf: int) -> bool:
        parent = self.parent[leaf]
        return parent >= 0 and len(self.children[parent]) >= 2

    @cached_property
    def evaluated(self) -> list[list[int]]:
        """Per node, the exits whose heads an exit rule evaluates on the way to it (and,
        for an exit that is a single sink, the exit itself)."""
        out = []
        for node in range(len(self.parent)):
            path = self.path_to(node)
            exits = [
                c
                for n in path[:-1]
                if len(self.children[n]) >= 2
                for c in self.children[n]
                if self.is_leaf(c)
            ]
            if self.is_leaf(node) and not self.decided_at_junction(node):
                exits.append(node)
            out.append(exits)
        return out

    @cached_property
    def deeper(self) -> dict[int, list[int]]:
        """Per leaf decided at a junction, the exits an example can still reach if it goes
        on from there (below the junction's other sinks): what the scheduler weighs."""
        out: dict[int, list[int]] = {}
        for leaf in self.leaves:
            parent = self.parent[leaf]
            if not self.decided_at_junction(leaf):
                out[leaf] = []
                continue
            below: list[int] = []
            stack = [c for c in self.children[parent] if not self.is_leaf(c)]
            while stack:
                node = stack.pop()
                if self.is_leaf(node):
                    below.append(node)
                stack.extend(self.children[node])
            out[leaf] = sorted(below)
        return out


# --------------------------------------------------------------------------- answers


def boosted(logits: np.ndarray, history: np.ndarray | None, boost: float) -> np.ndarray:
    """A boosted exit's answer from its head's output: plus ``boost`` times the
    log-softmax of the answer of the exit passed last (``history[:, -1]``); what
    ``RoutedTree.boosted_logits`` computes on a dense pass."""
    z = logits.astype(np.float32, copy=False)
    if not boost or history is None or not history.shape[1]:
        return z
    return z + np.float32(boost) * history[:, -1]


def boosted_exits(
    shape: Shape, heads: dict[int, np.ndarray], boost: float
) -> dict[int, np.ndarray]:
    """Every exit's answer from every exit head's output on a dense pass (``boosted``, in
    path order; what ``RoutedTree.boosted_logits`` computes in PyTorch)."""
    if not boost:
        return heads
    answers: dict[int, np.ndarray] = {}
    for leaf in sorted(heads, key=lambda leaf: len(shape.history[leaf])):
        passed = shape.history[leaf]
        last = log_softmax(answers[passed[-1]])[:, None] if passed else None
        answers[leaf] = boosted(heads[leaf], last, boost)
    return answers


class Decider:
    """A policy bound to a tree: answers, measures and junction choices (module docstring).

    ``history`` arguments are the raw log-softmaxes of the exits an example passed, in path
    order, (N, m, classes) or None; callers carry them only when ``needs_history``.
    """

    def __init__(self, policy: Policy, shape: Shape, classes: int) -> None:
        rule = policy.rule
        if not rule.deployable and not rule.needs_labels:
            raise DynrouteError(f"the {policy.name} policy cannot decide")
        self.policy = policy
        self.rule = rule
        self.shape = shape
        self.classes = classes
        leaves = shape.leaves
        policy.check(len(leaves), classes, [len(shape.history[leaf]) for leaf in leaves])
        self.reads_exits = policy.uses_threshold
        self.needs_history = policy.answers == "combined" or rule.needs_history
        #: Whether the heads of the exits an example passes run (to decide, or because an
        #: answer builds on theirs), and whether an exit's answer is more than its logits.
        self.runs_heads = self.reads_exits or self.needs_history or bool(shape.boost)
        self.transforms = self.reads_exits or policy.answers != "raw"
        self._weights = [np.asarray(w, np.float32) for w in policy.weights or ()]
        self._biases = [np.asarray(b, np.float32) for b in policy.biases or ()]
        self._thresholds = (
            None if policy.thresholds is None else np.asarray(policy.thresholds, np.float32)
        )
        self._state = rule.prepare(policy) if self.reads_exits else None

    # ------------------------------------------------------------------ one exit
    def answer(self, position: int, history: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """The exit's answer: its logits as they are (raw answers), else log-probabilities."""
        if self.policy.answers == "raw":
            return logits.astype(np.float32, copy=False)
        weights = self._weights[position]
        mixed = log_softmax(logits) * weights[-1] + self._biases[position]
        if self.policy.answers == "combined" and history is not None and history.shape[1]:
            mixed = mixed + (history * weights[:-1, None]).sum(axis=1)
        return log_softmax(mixed)

    def measure(self, position: int, history: np.ndarray | None, answer: np.ndarray) -> np.ndarray:
        """The rule's measure of an answer (float32, N): what its threshold is held to."""
        return self.rule.measure(self._state, position, history, answer)

    def passes(self, measure: np.ndarray, positions: Any) -> np.ndarray:
        return passes(self.policy, measure, positions, self._thresholds)

    def certainty(self, measure: np.ndarray) -> np.ndarray:
        return certainty(self.policy, measure)

    # ------------------------------------------------------------------ junctions
    def runs_router(self, junction: int) -> bool:
        """Whether the junction's router runs (learned: always; exit rules: only to choose
        among several non-exit sinks, or among exits alone)."""
        if not self.reads_exits:
            return True
        inner = sum(not self.shape.is_leaf(c) for c in self.shape.children[junction])
        return inner != 1

    def choose(
        self, junction: int, scores: np.ndarray | None, measures: dict[int, np.ndarray]
    ) -> np.ndarray:
        """Position (among the junction's sinks) each example goes to, (N,) int64.

        ``scores``: the router's output where ``runs_router``; ``measures``: by sink
        position, the measure of each exit sink's answer (exit rules only)."""
        if not self.reads_exits:
            assert scores is not None
            return scores.argmax(axis=1)
        children = self.shape.children[junction]
        leaves = [k for k, c in enumerate(children) if self.shape.is_leaf(c)]
        inner = [k for k, c in enumerate(children) if not self.shape.is_leaf(c)]
        if not leaves:
            assert scores is not None
            return scores.argmax(axis=1)
        where = self.shape.leaf_position
        if len(leaves) == 1 and len(inner) == 1:  # a chain's junction: leave here or go on
            passing = self.passes(measures[leaves[0]], where[children[leaves[0]]])
            return np.where(passing, np.int64(leaves[0]), np.int64(inner[0]))
        size = measures[leaves[0]].shape[0]
        if inner:
            if len(inner) == 1:
                fallback = np.full(size, inner[0], dtype=np.int64)
            else:
                assert scores is not None
                fallback = np.asarray(inner, dtype=np.int64)[scores[:, inner].argmax(axis=1)]
        else:  # only exits here: the router picks the fallback exit
            assert scores is not None
            fallback = scores.argmax(axis=1)
        sure = np.stack([self.certainty(measures[k]) for k in leaves], axis=1)
        passing = np.stack([self.passes(measures[k], where[children[k]]) for k in leaves], axis=1)
        best = np.where(passing, sure, np.float32(-np.inf)).argmax(axis=1)
        chosen = np.asarray(leaves, dtype=np.int64)[best]
        return np.where(passing.any(axis=1), chosen, fallback)

    # ------------------------------------------------------------------ dense passes
    def every_exit(
        self, logits: dict[int, np.ndarray]
    ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """Every exit's answer and measure, by leaf, from every exit's raw logits (a dense
        pass: each exit sees the exits on its own path as history)."""
        own = {leaf: log_softmax(z) for leaf, z in logits.items()} if self.needs_history else {}
        answers, measures = {}, {}
        for position, leaf in enumerate(self.shape.leaves):
            passed = self.shape.history[leaf]
            history = np.stack([own[c] for c in passed], 1) if own and passed else None
            answers[leaf] = self.answer(position, history, logits[leaf])
            if self.reads_exits:
                measures[leaf] = self.measure(position, history, answers[leaf])
        return answers, measures

    def dense_choices(
        self, measures: dict[int, np.ndarray], scores: dict[int, np.ndarray]
    ) -> dict[int, np.ndarray]:
        """Every junction's choice (sink position per example) in a dense pass."""
        out = {}
        for j in self.shape.junctions:
            kids = self.shape.children[j]
            sink_measures = {k: measures[c] for k, c in enumerate(kids) if c in measures}
            out[j] = self.choose(j, scores.get(j), sink_measures)
        return out

    def reached_exits(self, choices: dict[int, np.ndarray], n: int) -> np.ndarray:
        """The exit (node index) each example ends at, given every junction's choice."""
        shape = self.shape
        reached = np.zeros((len(shape.parent), n), dtype=bool)
        reached[0] = True
        for index, kids in enumerate(shape.children):
            if len(kids) == 1:
                reached[kids[0]] = reached[index]
            elif len(kids) >= 2:
                for k, child in enumerate(kids):
                    reached[child] = reached[index] & (choices[index] == k)
        at_leaf = reached[shape.leaves].argmax(axis=0)
        return np.asarray(shape.leaves, dtype=np.int64)[at_leaf]


def passes(
    policy: Policy, measure: np.ndarray, positions: Any, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Whether each measure is enough to stop at its exit (``positions``: the exits'
    places in leaf order, an int or an array like ``measure``): float32 comparisons."""
    if policy.thresholds is not None:
        if thresholds is None:
            thresholds = np.asarray(policy.thresholds, np.float32)
        return policy.rule.passes(measure, thresholds[positions])
    return policy.rule.passes(measure, np.float32(policy.threshold))


def certainty(policy: Policy, measure: np.ndarray) -> np.ndarray:
    """Higher is more certain (the most certain passing exit takes an example)."""
    return policy.rule.certainty(measure)


# --------------------------------------------------------------------------- costs


def base_path_macs(
    shape: Shape, transform: Sequence[int], router: Sequence[int]
) -> dict[str, list[int]]:
    """Per cost model, what an example classified at each node has cost, from each node's
    transform and router MACs (``dynroute.nn.macs.TreeCosts.base_path_macs`` says what the
    models count). Torch-free and linear in the nodes (pre-order: a parent comes first), so
    the export runtime recomputes a manifest's path costs from its nodes' costs."""
    count = len(shape.parent)
    # What a threshold rule pays at each node it passes: the exit heads its junction
    # evaluates, and the router only where it still chooses among several inner sinks.
    heads, routers = [0] * count, [0] * count
    for j in shape.junctions:
        kids = shape.children[j]
        heads[j] = sum(transform[c] for c in kids if shape.is_leaf(c))
        inner = sum(not shape.is_leaf(c) for c in kids)
        routers[j] = router[j] if inner != 1 else 0
    learned, oracle, threshold, passed = [0] * count, [0] * count, [0] * count, [0] * count
    for i in range(count):
        parent = shape.parent[i]
        above = (learned[parent], oracle[parent], passed[parent]) if parent >= 0 else (0, 0, 0)
        own = transform[i] + heads[i] + routers[i]
        learned[i] = above[0] + transform[i] + router[i]
        oracle[i] = above[1] + transform[i]
        passed[i] = above[2] + own
        # An exit decided at a junction had its head paid there; other nodes pay their own.
        paid_at_junction = shape.is_leaf(i) and shape.decided_at_junction(i)
        threshold[i] = above[2] + (0 if paid_at_junction else own)
    return {"learned": learned, "threshold": threshold, "oracle": oracle}


def decision_macs(policy: Policy, shape: Shape, classes: int) -> list[int]:
    """Per exit (leaf order), the multiply-adds its answer and measure cost beyond its head:
    a multiply-add per class and answer combined (calibrated: one; a boosted exit adds the
    answer before it: one more), and the scheduler's models (one per deeper exit weighed, a
    multiply-add per feature)."""
    out = []
    for position, leaf in enumerate(shape.leaves):
        macs = classes if shape.boost and shape.history[leaf] else 0
        if policy.answers == "calibrated":
            macs += classes
        elif policy.answers == "combined":
            macs += (len(shape.history[leaf]) + 1) * classes
        if policy.uses_threshold:
            macs += policy.rule.decision_macs(policy, position)
        out.append(macs)
    return out


def path_macs(
    policy: Policy, shape: Shape, classes: int, base: dict[str, Sequence[int]]
) -> list[int]:
    """Per node, what an example classified there costs under ``policy``: ``base`` (path
    MACs by cost model: ``learned``, ``threshold``, ``oracle``) for its cost model, plus
    what deciding costs at every exit it evaluates on the way (``decision_macs``). Under
    the routers an example pays for the answer of the exit it takes, and where that answer
    builds on the exits passed (combined answers, boosted exits), for their heads too."""
    table = list(base[policy.cost_model])
    if policy.rule.needs_labels:
        return [int(m) for m in table]
    extra = decision_macs(policy, shape, classes)
    where = shape.leaf_position
    if policy.uses_threshold:
        return [
            int(table[node]) + sum(extra[where[e]] for e in shape.evaluated[node])
            for node in range(len(table))
        ]
    oracle = base["oracle"]
    passed_heads = policy.answers == "combined" or bool(shape.boost)
    out = []
    for node in range(len(table)):
        macs = int(table[node])
        leaf = shape.is_leaf(node)
        if passed_heads:
            passed = shape.history[node] if leaf else shape.evaluated[node]
            macs += sum(int(oracle[e]) - int(oracle[shape.parent[e]]) for e in passed)
        if leaf:
            macs += extra[where[node]]
        out.append(macs)
    return out
