"""``dynroute.fit`` and ``dynroute.load``: training from Python on in-memory tensors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import dynroute
from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import DatasetSplit
from dynroute.nn.chains import routed_chain, static_truncation
from dynroute.train import data as data_module
from dynroute.train import resume as resume_module
from dynroute.train.config import TrainConfig
from dynroute.train.trainer import Trainer
from helpers.stopping_loader import StoppingLoader

SHAPE = (3, 16, 16)
QUICK = dict(batch_size=8, eval_every=3, checkpoint_every=2, progress=False)


def stages() -> list[nn.Module]:
    def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())

    return [conv(3, 8, 2), conv(8, 16, 2)]


def tree(seed: int = 0):
    torch.manual_seed(seed)
    return routed_chain(stages(), 3, input_shape=SHAPE)


def tensors(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, *SHAPE, generator=gen) * 0.2
    images[torch.arange(n), labels] += 0.5  # class-dependent colour: learnable
    return images, labels


@pytest.mark.slow
def test_fit_your_own_tree_writes_a_run_directory(tmp_path) -> None:
    out = tmp_path / "run"
    result = dynroute.fit(
        tree(), tensors(), tensors(16, 1), out=out, k_cpt=1e-9, iterations=6, **QUICK
    )
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "summary.json",
    }
    stored = json.loads((out / "config.json").read_text())
    assert stored["model"] == "custom" and stored["image_size"] == 16
    assert result.summary["iterations"] == 6 and result.final["test"]["num_examples"] == 16
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in metrics] == [3, 6]
    with pytest.raises(DynrouteError, match="tree you built in Python"):
        dynroute.load(out)
    loaded = dynroute.load(out, tree(seed=5))
    assert not loaded.training
    for key, value in result.tree.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_resume_with_the_same_tree_equals_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    train, test = tensors(), tensors(16, 1)
    full = dynroute.fit(tree(), train, test, out=tmp_path / "full", iterations=6, **QUICK)

    class Killed(StoppingLoader):
        stop_after = 3  # after the checkpoint at step 2

    monkeypatch.setattr(data_module, "BatchLoader", Killed)
    with pytest.raises(KeyboardInterrupt):
        dynroute.fit(tree(), train, test, out=tmp_path / "part", iterations=6, **QUICK)
    monkeypatch.undo()
    with pytest.raises(DynrouteError, match="already holds a run"):
        dynroute.fit(tree(), train, test, out=tmp_path / "part", iterations=6, **QUICK)
    other = routed_chain([*stages()[:1]], 3, input_shape=SHAPE)
    with pytest.raises(DynrouteError, match="does not match"):
        dynroute.fit(other, train, test, out=tmp_path / "part", iterations=6, resume=True, **QUICK)
    resumed = dynroute.fit(
        tree(seed=9), train, test, out=tmp_path / "part", iterations=6, resume=True, **QUICK
    )
    assert resumed.summary["iterations"] == 6
    for key, value in full.tree.state_dict().items():
        assert torch.equal(resumed.tree.state_dict()[key], value), key


def test_fit_a_model_name_on_datasets(tmp_path) -> None:
    train, test = TensorDataset(*tensors()), TensorDataset(*tensors(16, 1))
    out = tmp_path / "run"
    result = dynroute.fit(
        "mobilenet-v3-small-exits", train, test, out=out, strategy="multi-exit", iterations=2,
        class_names=("red", "green", "blue"), **QUICK,
    )  # fmt: skip
    assert result.tree.spec == {
        "name": "mobilenet-v3-small-exits",
        "num_classes": 3,
        "width": 1,
        "dynamic_k_cpt": False,
        "image_size": 16,
    }
    assert result.summary["class_names"] == ["red", "green", "blue"]
    loaded = dynroute.load(out)  # rebuilt from the checkpoint's spec alone
    for key, value in result.tree.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_static_tree_and_evaluation_on_the_training_data(tmp_path) -> None:
    torch.manual_seed(0)
    static = static_truncation(stages(), 2, 3, input_shape=SHAPE)
    result = dynroute.fit(
        static, tensors(), out=tmp_path / "run", strategy="static", iterations=2, **QUICK
    )
    assert set(result.final) >= {"train"} and result.final["train"]["num_examples"] == 32
    with pytest.raises(DynrouteError, match="trees without junctions"):
        dynroute.fit(tree(), tensors(), out=tmp_path / "x", strategy="static", **QUICK)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: dynroute.fit(tree(), tensors(), out=out, speed=3), "unknown training options"),
        (lambda out: dynroute.fit(tree(), tensors(), out=out, image_size=8), "fit sets image_size"),
        (lambda out: dynroute.fit(tree(), torch.zeros(4), out=out), "an \\(images, labels\\) pair"),
        (
            lambda out: dynroute.fit(tree(), (torch.zeros(4, 3, 8, 8), torch.zeros(4)), out=out),
            "holds float32 labels",
        ),
        (
            lambda out: dynroute.fit(tree(), (torch.zeros(4, 3, 8, 8), torch.arange(4)), out=out),
            r"the tree reads \(3, 16, 16\)",
        ),
        (
            lambda out: dynroute.fit("chain", (torch.zeros(4, 3, 8, 6), torch.arange(4)), out=out),
            "square RGB images",
        ),
    ],
)
def test_fit_errors(tmp_path, call, message) -> None:
    with pytest.raises(DynrouteError, match=message):
        call(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_custom_run_needs_its_tree(tmp_path) -> None:
    config = TrainConfig(model="custom", iterations=2, batch_size=8)
    with pytest.raises(DynrouteError, match="must be one of chain"):
        config.validate()  # not a registered name: only the trainer knows what it means
    assert resume_module.validate_config(config) is config
    images, labels = tensors()
    split = DatasetSplit(images.numpy(), labels.numpy(), ("a", "b", "c"), (True,) * 3)
    parts = {"train": split, "test": split}
    data = data_module.training_data(config, parts, torch.device("cpu"))
    with pytest.raises(DynrouteError, match="trains your own tree: pass the same tree"):
        Trainer(config, data, tmp_path / "run", progress=False)
    with pytest.raises(DynrouteError, match="run on your own tree has model 'custom'"):
        Trainer(TrainConfig(iterations=2), data, tmp_path / "run", progress=False, tree=tree())
