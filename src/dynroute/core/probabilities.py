"""Torch-free arithmetic on answers (logits): softmaxes and the certainty measures that
exit rules hold to a threshold. Float32 throughout, so the engine, the exit tables and
the export runtime compare the same numbers."""

from __future__ import annotations

import math

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32, copy=False)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_softmax_all(logits: np.ndarray) -> np.ndarray:
    """(N, exits, classes) log-softmaxes of every exit's logits."""
    n, exits, classes = logits.shape
    return log_softmax(logits.reshape(n * exits, classes)).reshape(n, exits, classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32, copy=False)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per example: 1 / sum(exp(z - max z))."""
    z = logits.astype(np.float32, copy=False)
    return np.float32(1.0) / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)


def normalised_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of the softmax divided by log(classes), in [0, 1]."""
    log_p = log_softmax(logits)
    return -(np.exp(log_p) * log_p).sum(axis=1) / np.float32(math.log(logits.shape[1]))
