"""Routing decisions in NumPy: what ``dynroute.nn.routing`` decides, without torch.

The same rules, step for step and in float32 like the PyTorch reference, so an export takes
the same exits as the network it came from (``tests/test_deploy.py`` checks it against
``dynroute.nn.prediction.predict_dense``):

- ``learned``: the router's argmax;
- ``confidence`` / ``entropy`` / ``budgeted``: the junction's exits pass when their max
  softmax is >= the threshold (``thresholds[exit]`` for the budgeted policy), or their
  normalised entropy <= it; the most certain passing exit takes the example, otherwise it
  goes on to the one non-exit sink, or to the one the router prefers among several;
- ``ensemble``: as ``confidence`` on each exit's combined answer, the log-softmax of a
  weighted sum of the log-softmaxes of the exits passed on the path and its own, plus a
  bias per class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dynroute.deploy.manifest import THRESHOLD_POLICIES


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32, copy=False)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32, copy=False)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per example: 1 / sum(exp(z - max z)), the softmax of the
    largest logit, with two array operations fewer than taking the softmax first."""
    z = logits.astype(np.float32, copy=False)
    return np.float32(1.0) / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)


def normalised_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of the softmax divided by log(classes), in [0, 1]."""
    log_p = log_softmax(logits)
    return -(np.exp(log_p) * log_p).sum(axis=1) / np.float32(math.log(logits.shape[1]))


def certain(
    policy: dict[str, Any], logits: np.ndarray, position: int
) -> tuple[np.ndarray, np.ndarray]:
    """How certain the exit at ``position`` (in leaf order) is (higher is more: 1 - the
    normalised entropy for the entropy policy, else the max softmax), and whether that is
    enough to stop there."""
    if policy["name"] == "entropy":
        entropy = normalised_entropy(logits)
        return np.float32(1.0) - entropy, entropy <= np.float32(policy["threshold"])
    sure = confidence(logits)
    per_exit = policy.get("thresholds")
    threshold = policy["threshold"] if per_exit is None else per_exit[position]
    return sure, sure >= np.float32(threshold)


class Ensemble:
    """The ensemble policy's parameters as float32 arrays, one set per exit position."""

    def __init__(self, policy: dict[str, Any]) -> None:
        self.weights = [np.asarray(w, dtype=np.float32) for w in policy["weights"]]
        self.biases = [np.asarray(b, dtype=np.float32) for b in policy["biases"]]

    def combine(
        self,
        position: int,
        history: np.ndarray | None,
        logits: np.ndarray,
        own: np.ndarray | None = None,
    ) -> np.ndarray:
        """Log-probs of the exit at ``position``: its own ``logits`` (N, classes) combined
        with the log-softmaxes of the exits passed (``history``: (N, m, classes)); ``own``:
        ``log_softmax(logits)`` where the caller has it already."""
        weights = self.weights[position]
        own = log_softmax(logits) if own is None else own
        mixed = own * weights[-1] + self.biases[position]
        if history is not None and history.shape[1]:
            mixed = mixed + (history * weights[:-1, None]).sum(axis=1)
        return log_softmax(mixed)


def uses_threshold(policy: dict[str, Any]) -> bool:
    return policy["name"] in THRESHOLD_POLICIES


def needs_router(policy: dict[str, Any], sink_is_leaf: list[bool]) -> bool:
    """Whether a junction with these sinks runs its router (learned: always; threshold
    policies: only to choose among several non-exit sinks, or among exits alone)."""
    if not uses_threshold(policy):
        return True
    return sum(not leaf for leaf in sink_is_leaf) != 1


def junction_choice(
    policy: dict[str, Any],
    sink_is_leaf: list[bool],
    sink_positions: list[int | None],
    scores: np.ndarray | None,
    answers: dict[int, np.ndarray],
) -> np.ndarray:
    """Position (among the junction's sinks) each example goes to, shape (N,) int64.

    ``sink_positions``: each sink's place in the tree's leaf order (None for inner sinks);
    ``scores``: the router's output where ``needs_router``; ``answers``: by sink position,
    the exit logits (the combined answers, for the ensemble policy).
    """
    if not uses_threshold(policy):
        assert scores is not None
        return scores.argmax(axis=1)
    leaves = [k for k, leaf in enumerate(sink_is_leaf) if leaf]
    inner = [k for k, leaf in enumerate(sink_is_leaf) if not leaf]
    if not leaves:
        assert scores is not None
        return scores.argmax(axis=1)
    if len(leaves) == 1 and len(inner) == 1:  # a chain's junction: exit here or go on
        passing = certain(policy, answers[leaves[0]], sink_positions[leaves[0]])[1]
        return np.where(passing, np.int64(leaves[0]), np.int64(inner[0]))
    size = answers[leaves[0]].shape[0]
    if inner:
        if len(inner) == 1:
            fallback = np.full(size, inner[0], dtype=np.int64)
        else:
            assert scores is not None
            fallback = np.asarray(inner, dtype=np.int64)[scores[:, inner].argmax(axis=1)]
    else:
        assert scores is not None
        fallback = scores.argmax(axis=1)
    judged = [certain(policy, answers[k], sink_positions[k]) for k in leaves]
    sure = np.stack([j[0] for j in judged], axis=1)
    passing = np.stack([j[1] for j in judged], axis=1)
    best = np.where(passing, sure, np.float32(-1.0)).argmax(axis=1)
    chosen = np.asarray(leaves, dtype=np.int64)[best]
    return np.where(passing.any(axis=1), chosen, fallback)
