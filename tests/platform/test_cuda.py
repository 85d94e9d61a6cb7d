"""The CUDA path: the same batches, losses and routing as on the CPU, and no hidden
host-device synchronisation inside a training step. Skipped without a GPU
(``benchmarks/gpu_check.sh`` runs them on one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynroute.data.datasets import DatasetSplit
from dynroute.data.loader import BatchLoader
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.models import build_model
from dynroute.nn.prediction import predict_dense
from dynroute.train.config import TrainConfig
from dynroute.train.data import Split, TrainingData
from dynroute.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def split(n: int = 256, classes: int = 10) -> DatasetSplit:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    images = rng.random((n, 3, 32, 32), dtype=np.float32) * 0.3
    images[np.arange(n), labels % 3] += 0.5  # learnable colour cue
    names = tuple(str(i) for i in range(classes))
    return DatasetSplit(images, labels, names, tuple(i % 2 == 0 for i in range(classes)))


def data(device: torch.device, batch_size: int = 128) -> TrainingData:
    part = split()
    loader = BatchLoader(part, batch_size, seed=0, device=device)
    test = Split(torch.from_numpy(part.images[:128]), torch.from_numpy(part.labels[:128]))
    return TrainingData(loader, {"test": test}, 10)


def config(device: str, **changes) -> TrainConfig:
    base = dict(
        iterations=100, batch_size=128, k_cpt=4e-9, device=device, eval_every=10**6,
        checkpoint_every=10**6,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_loader_draws_the_same_batches_on_the_gpu():
    cpu, gpu = BatchLoader(split(), 64, seed=3), BatchLoader(split(), 64, seed=3, device=CUDA)
    for _ in range(3):
        (x, y), (gx, gy) = cpu.next_batch(), gpu.next_batch()
        assert gx.device.type == "cuda" and gy.device.type == "cuda"
        assert torch.equal(y, gy.cpu())
        torch.testing.assert_close(gx.cpu(), x, rtol=0, atol=1e-6)  # fill = a mean


@pytest.mark.parametrize(
    "changes",
    [{}, {"bf16": True}, {"dynamic_k_cpt": True, "k_cpt": 0.0}, {"strategy": "critic"}],
    ids=["fp32", "bf16", "dynamic-k_cpt", "critic"],
)
def test_training_steps_match_the_cpu(tmp_path, changes):
    torch.manual_seed(0)
    losses = {}
    for device in ("cpu", "cuda"):
        trainer = Trainer(config(device, **changes), data(torch.device(device)), tmp_path / device)
        trainer.loss_read_every = 1
        losses[device] = [trainer.train_step()["loss"] for _ in range(3)]
    # TF32 convolutions and bf16 autocast round differently; the first step is the same loss.
    tolerance = 3e-2 if changes.get("bf16") else 5e-3
    assert losses["cuda"][0] == pytest.approx(losses["cpu"][0], rel=tolerance)
    # After two updates (fused SGD and TALR on the GPU, foreach on the CPU): still close.
    assert losses["cuda"][2] == pytest.approx(losses["cpu"][2], rel=3 * tolerance)
    assert all(np.isfinite(losses["cuda"]))


def test_training_step_never_waits_for_the_gpu(tmp_path):
    """A host read inside the step (``.item()``, a pageable copy) would idle the GPU."""
    trainer = Trainer(config("cuda"), data(CUDA), tmp_path, progress=False)
    trainer.loss_read_every = 10**6
    trainer.train_step()  # warm-up: allocator, cuDNN algorithm choice
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(trainer.read_losses())


def test_compiled_cuda_graph_training_matches_eager(tmp_path):
    losses = {}
    for name, changes in {
        "eager": {},
        "graphs": {"compile": True, "compile_mode": "reduce-overhead"},
    }.items():
        torch.manual_seed(0)
        trainer = Trainer(config("cuda", **changes), data(CUDA), tmp_path / name, progress=False)
        trainer.loss_read_every = 1
        losses[name] = [trainer.train_step()["loss"] for _ in range(4)]
        record = trainer.evaluate()
        assert 0 <= record["test"]["accuracy"] <= 1
    assert losses["graphs"][0] == pytest.approx(losses["eager"][0], rel=1e-3)
    assert losses["graphs"][-1] == pytest.approx(losses["eager"][-1], rel=2e-2)


def test_engine_on_the_gpu_matches_dense_routing():
    torch.manual_seed(0)
    tree = build_model("chain", 10).to(CUDA).eval()
    x = torch.rand(512, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        engine, dense = EarlyExitEngine(tree)(x), predict_dense(tree, x)
    agree = (engine.exits == dense.exits).float().mean().item()
    assert agree > 0.99  # TF32 rounding may flip a near-tie, nothing more
    same = engine.exits == dense.exits
    assert torch.equal(engine.predictions[same], dense.predictions[same])
