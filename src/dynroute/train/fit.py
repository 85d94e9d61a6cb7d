"""Training from Python: ``dynroute.fit`` on your own tensors, with your own tree or a model name.

``fit`` is ``dynroute train`` without the dataset files: the same ``Trainer``, the same run
directory (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``), the
same checkpoints and exact resume (``resume=True``)::

    import dynroute
    result = dynroute.fit("resnet18-exits", train=(x, y), test=(x_test, y_test),
                          strategy="actor", k_cpt=1e-9, iterations=2000, out="runs/mine")
    result.tree, result.final["test"]["accuracy"]

The images are used as given: float (N, C, H, W), what the network reads (no resizing, no
gamma decoding); labels are integers 0..C-1. Every ``TrainConfig`` option is a keyword
(``lr=0.05``, ``batch_size=64``, ``augment=False``, ``pretrained_weights=FILE``, ...);
augmentation shifts and flips every class. Without ``test`` the run evaluates on its
training data.

Your own tree (``dynroute.nn.chains.routed_chain`` or any ``RoutedTree``) is trained in
place; its run records model ``custom``. No registered builder makes it, so a checkpoint
cannot rebuild it: to resume, pass the same tree (built the same way) with
``resume=True``; to load the trained weights later, ``dynroute.load(run, tree)``. A run
on a model name rebuilds from its checkpoint alone: ``dynroute.load(run)``,
``dynroute evaluate``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import DatasetSplit
from dynroute.data.readers.common import check_label_count
from dynroute.data.readers.npz_arrays import _labels as checked_labels
from dynroute.nn import checkpoint
from dynroute.nn.registry import (
    CHANNELS,
    CUSTOM_MODEL,
    IMAGE_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
)
from dynroute.nn.tree import RoutedTree
from dynroute.platform.devices import resolve_device
from dynroute.runs import DataRecord, arrays_fingerprint, open_run
from dynroute.train.config import TrainConfig
from dynroute.train.data import training_data
from dynroute.train.resume import inspect_run_dir, validate_config
from dynroute.train.trainer import Trainer

#: ``config.dataset`` of a run on in-memory data: a dataset name that loads nothing, so
#: ``dynroute evaluate`` asks for ``--dataset`` instead of evaluating on other data.
IN_MEMORY_DATASET = "npz:<in-memory arrays given to dynroute.fit>"
#: Options ``fit`` derives itself, from its arguments and the data.
DERIVED_OPTIONS = ("model", "image_size", "eval_splits", "validation_size")
#: Images converted from a ``Dataset`` per batch.
DATASET_BATCH = 1024

Data = tuple[Any, Any] | Dataset


@dataclass
class FitResult:
    """What ``fit`` returns: the trained tree, its run directory and the run's summary."""

    tree: RoutedTree
    run_dir: Path
    summary: dict[str, Any]

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation: per split, accuracy, mean MACs and per-exit statistics."""
        return self.summary["final"]


def _arrays(data: Data, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 NCHW, labels int64) from an (x, y) pair or a ``Dataset``."""
    if isinstance(data, Dataset):
        try:
            batches = list(DataLoader(data, batch_size=DATASET_BATCH))
            x = torch.cat([torch.as_tensor(b[0]) for b in batches])
            y = torch.cat([torch.as_tensor(b[1]) for b in batches])
        except (TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise DynrouteError(
                f"{what}: a Dataset must yield (image tensor (C, H, W), integer label) pairs "
                f"({type(exc).__name__}: {exc})"
            ) from None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise DynrouteError(f"{what} must be an (images, labels) pair or a torch Dataset")
    images = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise DynrouteError(
            f"{what} images must be floats of shape (N, C, H, W), got {images.dtype} {images.shape}"
        )
    labels = checked_labels(labels, f"{what} labels")
    if len(images) != len(labels) or len(labels) == 0:
        raise DynrouteError(f"{what} has {len(images)} images and {len(labels)} labels")
    return np.ascontiguousarray(images, dtype=np.float32), labels


def _image_size(shape: Sequence[int], model: str | RoutedTree) -> int:
    """The square image size a model name is built for; for your own tree, the size recorded
    in the config (its images' side where that is a valid ``image_size``, else the default)."""
    side = int(shape[-1])
    valid = shape[-2] == side and MIN_IMAGE_SIZE <= side <= MAX_IMAGE_SIZE
    if isinstance(model, RoutedTree):
        if tuple(shape) != model.input_shape:
            raise DynrouteError(
                f"the images have shape {tuple(shape)}, the tree reads {model.input_shape}"
            )
        return side if valid else IMAGE_SIZE
    if not valid or shape[0] != CHANNELS:
        raise DynrouteError(
            f"registered models read square RGB images of {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} px, "
            f"got (C, H, W) = {tuple(shape)}"
        )
    return side


def fit(
    model: str | RoutedTree,
    train: Data,
    test: Data | None = None,
    *,
    out: str | os.PathLike[str],
    strategy: str = "actor",
    k_cpt: float = 0.0,
    iterations: int = 1500,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` (a registered name or your own ``RoutedTree``) into run directory ``out``.

    ``train`` and ``test`` are (images, labels) pairs (tensors or arrays) or torch
    Datasets; ``options`` are ``TrainConfig`` fields. ``resume`` continues the run in
    ``out``, ``overwrite`` replaces it (as ``dynroute train --resume/--overwrite``).
    """
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DynrouteError(f"unknown training options: {', '.join(unknown)}")
    derived = sorted(set(options) & set(DERIVED_OPTIONS))
    if derived:
        raise DynrouteError(
            f"fit sets {', '.join(derived)} itself (from the model and the data; pass your "
            "own validation data as test=)"
        )
    x, y = _arrays(train, "train")
    parts = {"train": (x, y)}
    if test is not None:
        parts["test"] = _arrays(test, "test")
    if class_names is None:
        top = max(int(labels.max()) for _, labels in parts.values())
        check_label_count(top, "the labels")
        num_classes = top + 1
        class_names = [str(c) for c in range(num_classes)]
    names = tuple(class_names)
    splits = {
        name: DatasetSplit(images, labels, names, (True,) * len(names))
        for name, (images, labels) in parts.items()
    }
    custom = isinstance(model, RoutedTree)
    if custom:
        options.setdefault("dynamic_k_cpt", model.dynamic_k_cpt)
    options.setdefault("dataset", IN_MEMORY_DATASET)
    if options.get("pretrained_weights") is not None:  # a resumed run may start elsewhere
        options["pretrained_weights"] = str(Path(options["pretrained_weights"]).absolute())
    config = TrainConfig(
        model=CUSTOM_MODEL if custom else model,
        strategy=strategy,
        k_cpt=k_cpt,
        iterations=iterations,
        image_size=_image_size(x.shape[1:], model),
        eval_splits=("test",) if test is not None else ("train",),
        **options,
    )
    validate_config(config)
    out_dir = Path(out)
    inspect_run_dir(out_dir, config, resume, overwrite)  # refuses before any work
    arrays = [array for pair in parts.values() for array in pair]
    record = DataRecord(config.dataset, names, arrays_fingerprint(arrays))
    data = training_data(config, splits, resolve_device(config.device), record)
    trainer = Trainer(config, data, out_dir, progress=progress, tree=model if custom else None)
    summary = trainer.run(resume=resume, overwrite=overwrite)
    return FitResult(trainer.tree, out_dir, summary)


def load(
    run: str | os.PathLike[str],
    tree: RoutedTree | None = None,
    map_location: str | torch.device = "cpu",
) -> RoutedTree:
    """The trained network of a run directory (or checkpoint file), in eval mode.

    A run on your own tree needs ``tree``, built as it was for training: the weights are
    checked against it (names and shapes) and loaded into it.
    """
    path = open_run(run).checkpoint_path
    if tree is None:
        return checkpoint.load_model(path, map_location)
    source = f"checkpoint {path}"
    state = checkpoint.load_checkpoint(path, map_location)["state_dict"]
    checkpoint.check_state_dict(tree, state, source=source)
    checkpoint.check_finite(state, source)
    tree.load_state_dict(state)
    return tree.to(map_location).eval()
