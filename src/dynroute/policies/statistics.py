"""Paired comparisons of two classifiers on the same examples, and their correction.

Two policies or networks scored on one test set are compared example by example (exact
McNemar): only the examples one gets right and the other wrong carry information, and
under "no difference" they split like a fair coin. A claim that rests on many such tests
corrects them together (``holm``), so that "significantly ahead" holds for the family as
a whole. Result files carry per-example correctness as packed bits (``pack_bits``) so
networks can be paired later without rerunning them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Family-wise significance level of every claim.
SIGNIFICANCE = 0.05


def _bools(values) -> np.ndarray:
    if hasattr(values, "numpy"):
        values = values.numpy()
    return np.asarray(values, dtype=bool)


def mcnemar_counts(first, second) -> tuple[int, int]:
    """How many examples only ``first`` gets right, and only ``second``."""
    a, b = _bools(first), _bools(second)
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_p_value(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: so lopsided a split of the discordant examples
    under a fair coin."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def mcnemar(first, second) -> dict[str, float]:
    """Paired comparison of per-example correctness: the exact two-sided McNemar test.

    ``only_first``/``only_second``: examples just one of the two gets right; the p-value
    is that of so lopsided a split under a fair coin.
    """
    b, c = mcnemar_counts(first, second)
    n = len(_bools(first))
    return {
        "accuracy_difference": (b - c) / n if n else 0.0,
        "only_first": b,
        "only_second": c,
        "p_value": mcnemar_p_value(b, c),
    }


def holm(p_values: Sequence[float], alpha: float = SIGNIFICANCE) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``:
    the k-th smallest p-value is held to alpha / (m - k + 1), until one fails."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def pack_bits(values) -> str:
    """A bool vector as a compact hex string (per-example correctness in result files)."""
    return np.packbits(_bools(values).astype(np.uint8)).tobytes().hex()


def unpack_bits(text: str, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:count]
    return bits.astype(bool)
