"""bfloat16 on a CPU: training and inference where the CPU computes it natively, float32
with one warning where it does not."""

from __future__ import annotations

import pytest
import torch

from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.prediction import predict_dense
from dynroute.platform import machine
from dynroute.train.trainer import Trainer
from helpers.routing import random_conv_tree, scramble_routing
from helpers.training import synthetic_data, tiny_config

NATIVE = machine.native_bf16()


@pytest.mark.slow
def test_bf16_training_steps_run_in_the_cpus_layout_and_learn_as_float32_does(tmp_path) -> None:
    losses = {}
    for bf16 in (False, True):
        config = tiny_config(strategy="multi-exit", iterations=24, eval_every=24, bf16=bf16)
        trainer = Trainer(config, synthetic_data(), tmp_path / f"bf16-{bf16}", progress=False)
        assert trainer.bf16 == (bf16 and NATIVE)
        if trainer.bf16:  # channels-last with AMX tiles; elsewhere many times slower
            assert trainer.channels_last == machine.amx_bf16()
        first = trainer.train_step()["loss"]
        for _ in range(22):
            trainer.train_step()
        losses[bf16] = (first, trainer.read_losses())
    for first, last in losses.values():
        assert last < first  # both learn
    assert losses[True][1] <= losses[False][1] + 0.1  # and bf16 loses no more than fp32


def test_bf16_without_native_instructions_says_so_and_stays_float32(monkeypatch, capsys) -> None:
    from dynroute.platform.devices import bf16_on

    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    assert not bf16_on(torch.device("cpu"), True)
    assert "without native bfloat16 instructions" in capsys.readouterr().err
    assert not bf16_on(torch.device("cpu"), False)


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with native bf16 instructions")
def test_the_engine_in_bf16_routes_nearly_as_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(128, 3, 4, 4, generator=gen) * torch.rand(128, 1, 1, 1, generator=gen)
    tree = scramble_routing(random_conv_tree(3), x)
    reference = predict_dense(tree, x)
    engine = EarlyExitEngine(tree, bf16=True)
    assert engine.bf16 and not engine.channels_last
    ours = engine(x)
    assert ours.logits.dtype == torch.float32
    agree = (ours.exits == reference.exits).float().mean().item()
    assert agree >= 0.8
    same = ours.exits == reference.exits
    assert (ours.predictions[same] == reference.predictions[same]).float().mean() >= 0.9
