"""Exponential decay schedules for the learning rate and the temperature tau.

The paper runs 80,000 iterations with an lr half-life of 10,000 and a tau
half-life of 20,000 (docs/method.md §5): half-lives of 1/8 and 1/4 of the run, a
shape ``scaled_half_life`` keeps at any length (``TrainConfig`` gives runs
under 20,000 iterations 4 lr halvings instead, see ``default_lr_half_life``).
An optional linear warm-up ramps the lr from near 0 over its first iterations
(not in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_ITERATIONS = 80_000
PAPER_LR_HALF_LIFE = 10_000
PAPER_TAU_HALF_LIFE = 20_000


def scaled_half_life(paper_half_life: float, iterations: int) -> float:
    """Half-life with the same fraction of the run as in the paper."""
    return paper_half_life * iterations / PAPER_ITERATIONS


def exponential_decay(initial: float, half_life: float, step: int) -> float:
    """``initial * 2 ** (-step / half_life)``."""
    return initial * 2.0 ** (-step / half_life)


@dataclass(frozen=True)
class Schedule:
    """Learning rate and temperature as functions of the iteration."""

    lr: float
    lr_half_life: float
    tau: float
    tau_half_life: float
    lr_warmup: int = 0

    def lr_at(self, step: int) -> float:
        ramp = min(1.0, (step + 1) / self.lr_warmup) if self.lr_warmup else 1.0
        return ramp * exponential_decay(self.lr, self.lr_half_life, step)

    def tau_at(self, step: int) -> float:
        return exponential_decay(self.tau, self.tau_half_life, step)
