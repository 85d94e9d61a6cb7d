"""Learning-rate and temperature schedules keep the paper's shape at any run length."""

from __future__ import annotations

import json

import pytest

from dynroute.train.config import DEFAULTED_FIELDS, PAPER_K_CPT_SET, TrainConfig
from dynroute.train.schedules import Schedule


def test_half_lives_scale_with_the_run():
    paper = TrainConfig(iterations=80_000)
    assert (paper.resolved_lr_half_life, paper.resolved_tau_half_life) == (10_000, 20_000)
    long = TrainConfig(iterations=40_000)
    assert (long.resolved_lr_half_life, long.resolved_tau_half_life) == (5_000, 10_000)
    schedule = Schedule(0.1, 100, 1.0, 200)
    assert schedule.lr_at(0) == 0.1
    assert schedule.lr_at(100) == pytest.approx(0.05)
    assert schedule.tau_at(400) == pytest.approx(0.25)


def test_lr_warmup_ramps_linearly_then_decays():
    schedule = Schedule(0.1, 100, 1.0, 200, lr_warmup=4)
    ramp = [schedule.lr_at(t) / (0.1 * 2 ** (-t / 100)) for t in range(6)]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert schedule.tau_at(3) == Schedule(0.1, 100, 1.0, 200).tau_at(3)  # tau unaffected


def test_short_runs_default_to_their_own_recipe():
    short, paper = TrainConfig(iterations=1500), TrainConfig(iterations=80_000)
    assert (short.resolved_lr, short.resolved_lr_warmup) == (0.04, 150)
    assert (paper.resolved_lr, paper.resolved_lr_warmup) == (0.1, 0)
    # 4 lr halvings per short run, not the paper's 8; tau keeps the paper's shape
    assert (short.resolved_lr_half_life, short.resolved_tau_half_life) == (375, 375)
    explicit = TrainConfig(iterations=1500, lr=0.1, lr_warmup=0, lr_half_life=187.5)
    assert (explicit.resolved_lr, explicit.resolved_lr_warmup) == (0.1, 0)
    assert explicit.resolved_lr_half_life == 187.5


def test_resolved_fills_in_every_default_and_keeps_explicit_values():
    """``resolved`` is what a run directory stores: explicit numbers, never nulls."""
    config = TrainConfig(iterations=1500, strategy="critic", tau_half_life=100.0)
    resolved = config.resolved()
    assert (resolved.lr, resolved.lr_half_life, resolved.lr_warmup) == (0.04, 375, 150)
    assert (resolved.tau, resolved.tau_half_life) == (0.1, 100.0)
    assert (resolved.eval_every, resolved.checkpoint_every) == (93, 150)
    assert resolved.k_cpt_set is None  # a fixed-k_cpt run draws from no set
    assert all(getattr(resolved, name) is not None for name in DEFAULTED_FIELDS[:-1])
    assert config.lr is None and config.eval_every is None  # the original still defers
    assert resolved.resolved() == resolved
    assert resolved.validate() is resolved
    assert TrainConfig.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    dynamic = TrainConfig(dynamic_k_cpt=True).resolved().validate()
    assert dynamic.k_cpt_set == PAPER_K_CPT_SET
