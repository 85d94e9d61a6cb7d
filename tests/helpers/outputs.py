"""Synthetic dense outputs: exit logits with known structure, for the policy science."""

from __future__ import annotations

import numpy as np

from dynroute.policies.exit_table import DenseOutputs


def chain_outputs(n: int, seed: int, classes: int = 4, exits: int = 8) -> DenseOutputs:
    """A chain's exit logits that grow more informative with depth; each exit has its own
    noise (so combining exits helps, as it does for real exits), and every exit is
    overconfident by a factor (so recalibrating helps)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    hot = np.eye(classes, dtype=np.float32)[labels]
    shared = rng.standard_normal((n, classes)).astype(np.float32)
    logits = []
    for k in range(exits):
        own = rng.standard_normal((n, classes)).astype(np.float32)
        logits.append(2.5 * ((0.6 + 0.25 * k) * hot + 0.5 * shared + own))
    return DenseOutputs(np.stack(logits, 1), {}, labels)


def tree_outputs(tree, n: int, seed: int) -> DenseOutputs:
    """Outputs for any tree: deeper exits more often right, random router scores."""
    rng = np.random.default_rng(seed)
    classes = tree.num_classes
    labels = rng.integers(0, classes, n)
    hot = np.eye(classes, dtype=np.float32)[labels]
    depth = [len(tree.shape.history[leaf]) for leaf in tree.leaves]
    logits = np.stack(
        [(0.6 + 0.3 * d) * hot + rng.standard_normal((n, classes)) for d in depth], 1
    ).astype(np.float32)
    scores = {
        j: rng.standard_normal((n, len(tree.children_of[j]))).astype(np.float32)
        for j in tree.junctions
    }
    return DenseOutputs(logits, scores, labels)
