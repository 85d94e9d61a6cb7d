"""Training the backbone models: every strategy, pretrained weights, the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import DatasetSplit
from dynroute.nn.checkpoint import load_model
from dynroute.train.config import TrainConfig
from dynroute.train.data import training_data
from dynroute.train.trainer import Trainer
from helpers.backbones import torchvision_state

SIZE = 16
CASES = [
    ("resnet18-exits", "actor", {"k_cpt": 1e-9}),
    ("mobilenet-v3-small-exits", "actor", {"dynamic_k_cpt": True, "k_cpt_set": (0.0, 1e-8)}),
    ("resnet18-exits", "critic", {"k_cpt": 1e-9}),
    ("mobilenet-v3-small-exits", "critic", {}),
    ("resnet18-exits", "multi-exit", {}),
    ("mobilenet-v3-small-exits", "multi-exit", {}),
    ("resnet18-static-2", "static", {}),
    ("mobilenet-v3-small-static-4", "static", {}),
]


def split(n: int = 16, classes: int = 3, seed: int = 0) -> DatasetSplit:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.random((n, 3, SIZE, SIZE), dtype=np.float32) * 0.2
    images[np.arange(n), labels] += 0.5
    return DatasetSplit(images, labels, ("a", "b", "c"), (True,) * 3)


def config(model: str, strategy: str, **changes) -> TrainConfig:
    base = dict(
        model=model,
        strategy=strategy,
        image_size=SIZE,
        iterations=1,
        batch_size=8,
    )
    return TrainConfig(**{**base, **changes})


@pytest.mark.slow
@pytest.mark.parametrize(("model", "strategy", "changes"), CASES)
def test_every_strategy_trains_and_checkpoints(tmp_path, model, strategy, changes) -> None:
    cfg = config(model, strategy, **changes)
    data = training_data(cfg, {"train": split(), "test": split(seed=1)}, torch.device("cpu"))
    trainer = Trainer(cfg, data, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.tree.state_dict().items()}
    summary = trainer.run()
    assert summary["iterations"] == 1 and summary["spec"]["name"] == model
    stats = summary["final"]["test"]
    if cfg.dynamic_k_cpt:
        stats = stats["1e-08"]
    assert sum(node["classified"] for node in stats["nodes"]) == pytest.approx(1.0)
    after = trainer.tree.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    reloaded = load_model(tmp_path / "run" / "checkpoint.pt")
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, after[key].cpu()), key


def test_pretrained_weights_option(tmp_path) -> None:
    path = tmp_path / "mobilenet_v3_small.pth"
    state = torchvision_state("mobilenet-v3-small")
    torch.save(state, path)
    cfg = config("mobilenet-v3-small-static-2", "static", pretrained_weights=str(path))
    data = training_data(cfg, {"train": split(), "test": split(seed=1)}, torch.device("cpu"))
    tree = Trainer(cfg, data, tmp_path / "run", progress=False).tree
    stage2 = tree.nodes[1].transform
    for key, value in stage2.state_dict().items():
        assert torch.equal(value, state[key]), key
    wrong = config("resnet18-exits", "actor", pretrained_weights=str(path))
    with pytest.raises(DynrouteError, match="not a torchvision resnet18 state dict"):
        Trainer(wrong, data, tmp_path / "wrong", progress=False)


@pytest.mark.slow
def test_command_line_train_and_evaluate(tmp_path, cache_dir, capsys) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8),
        "y_train": np.arange(24) % 3,
        "x_test": rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8),
        "y_test": np.arange(12) % 3,
    }
    np.savez(tmp_path / "data.npz", **arrays)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision_state("resnet18"), weights)
    run = tmp_path / "run"
    threads = str(torch.get_num_threads())  # the command sets torch's threads: keep them
    args = ["train", "--dataset", f"npz:{tmp_path / 'data.npz'}", "--model", "resnet18-exits"]
    args += ["--image-size", str(SIZE), "--iterations", "1", "--batch-size", "8"]
    args += ["--k-cpt", "1e-9", "--pretrained-weights", str(weights), "--out", str(run)]
    assert main([*args, "--no-progress", "--threads", threads]) == 0
    stored = json.loads((run / "config.json").read_text())
    assert stored["pretrained_weights"] == str(weights) and stored["image_size"] == SIZE
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--threads", threads]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_examples"] == 12
    assert [n["name"] for n in stats["nodes"] if n["is_leaf"]] == [f"exit{k}" for k in range(1, 5)]
