"""What the trainer trains on: a batch stream over the training split and the splits it
evaluates on, loaded from a dataset (``load_training_data``) or from the caller's arrays
(``training_data``, which ``dynroute.fit`` uses)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import DatasetSplit, load_dataset
from dynroute.data.loader import BatchLoader
from dynroute.runs import DataRecord
from dynroute.train.config import TrainConfig


@dataclass
class Split:
    """Images (N, C, H, W float32 in [0, 1]) and labels of one evaluation split."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class TrainingData:
    """What the trainer needs from a dataset: a batch stream and evaluation splits."""

    loader: BatchLoader
    evaluation: dict[str, Split]
    num_classes: int
    class_names: tuple[str, ...] = ()
    record: DataRecord | None = None  # what the data is, for the run's data.json
    #: The validation split (never trained on), for fitting policies after training.
    held_out: Split | None = None


def load_training_data(
    config: TrainConfig,
    data_dir: str | os.PathLike[str] | None,
    device: torch.device,
    allow_checksum_mismatch: bool = False,
) -> TrainingData:
    """Load the run's dataset (built and cached on first use) for ``config``."""
    splits = load_dataset(
        config.dataset,
        data_dir,
        validation_size=config.validation_size,
        seed=config.seed,
        allow_checksum_mismatch=allow_checksum_mismatch,
        image_size=config.image_size,
        test_fraction=config.test_fraction,
    )
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    return training_data(config, parts, device, DataRecord.of(splits))


def training_data(
    config: TrainConfig,
    parts: dict[str, DatasetSplit | None],
    device: torch.device,
    record: DataRecord | None = None,
) -> TrainingData:
    """Loaded splits as the trainer sees them: a batch stream over ``parts["train"]`` and the
    splits ``config.eval_splits`` names (``dynroute.fit`` brings its own arrays here);
    ``record`` says what the data is (it is written into the run directory)."""
    train = parts["train"]
    assert train is not None
    loader = BatchLoader(
        train,
        config.batch_size,
        seed=config.seed,
        augment=config.augment,
        replacement=config.sampling == "replacement",
        device=device,
    )
    evaluation = {}
    for name in config.eval_splits:
        part = parts.get(name)
        if part is None:
            raise DynrouteError(f"no {name} split to evaluate on")
        images = torch.from_numpy(np.array(part.images))
        evaluation[name] = Split(images, torch.from_numpy(np.asarray(part.labels)))
    held_out = parts.get("validation")
    if held_out is not None:
        held_out = Split(
            torch.from_numpy(np.array(held_out.images)),
            torch.from_numpy(np.asarray(held_out.labels)),
        )
    names = tuple(train.class_names)
    return TrainingData(loader, evaluation, len(names), names, record, held_out)
