"""A tiny learnable dataset and training config for trainer tests."""

from __future__ import annotations

import numpy as np
import torch

from dynroute.data.datasets import DatasetSplit
from dynroute.train.config import TrainConfig
from dynroute.train.data import Split, TrainingData
from helpers.stopping_loader import StoppingLoader


def synthetic_data(
    batch_size: int = 16, n: int = 64, classes: int = 3, stop_after: int | None = None
) -> TrainingData:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    images = rng.random((n, 3, 32, 32), dtype=np.float32) * 0.2
    images[np.arange(n), labels % 3] += 0.5  # class-dependent colour: learnable
    split = DatasetSplit(images, labels, tuple("abc"), (True, False, True))
    loader = StoppingLoader(split, batch_size, seed=0)
    loader.stop_after = stop_after
    test = Split(torch.from_numpy(images[:32]), torch.from_numpy(labels[:32]))
    return TrainingData(loader, {"test": test}, classes)


def tiny_config(**changes) -> TrainConfig:
    base = dict(dataset="hybrid", iterations=6, batch_size=16, eval_every=3, checkpoint_every=2)
    base.update(changes)
    return TrainConfig(**base)
