"""Paired comparisons of two classifiers on the same examples (exact McNemar).

Two policies or networks scored on one test set are compared example by example: only the
examples one gets right and the other wrong carry information, and under "no difference"
they split like a fair coin. Result files carry per-example correctness as packed bits
(``pack_bits``) so networks can be paired later without rerunning them.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mcnemar_counts(first: torch.Tensor, second: torch.Tensor) -> tuple[int, int]:
    """How many examples only ``first`` gets right, and only ``second``."""
    return int((first & ~second).sum()), int((~first & second).sum())


def mcnemar_p_value(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar p-value: so lopsided a split of the discordant examples
    under a fair coin."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def mcnemar(first: torch.Tensor, second: torch.Tensor) -> dict[str, float]:
    """Paired comparison of per-example correctness: the exact two-sided McNemar test.

    ``only_first``/``only_second``: examples just one of the two gets right; the p-value
    is that of so lopsided a split under a fair coin.
    """
    b, c = mcnemar_counts(first, second)
    return {
        "accuracy_difference": (b - c) / len(first),
        "only_first": b,
        "only_second": c,
        "p_value": mcnemar_p_value(b, c),
    }


def pack_bits(values: torch.Tensor) -> str:
    """A bool vector as a compact hex string (per-example correctness in result files)."""
    return np.packbits(values.numpy().astype(np.uint8)).tobytes().hex()


def unpack_bits(text: str, count: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:count]
    return torch.from_numpy(bits.astype(bool))
