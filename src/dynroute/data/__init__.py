"""Datasets of the paper (MNIST, CIFAR-10 and derived sets) and the user's own (folder:PATH,
npz:PATH), caching and augmentation.

Importing the package registers the ``folder`` and ``npz`` dataset kinds
(``dynroute.data.registry``); the torch-backed names (``BatchLoader``, augmentation) load
on first use, so listing or building datasets needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dynroute.data import user_data  # noqa: F401  (registers folder:PATH and npz:PATH)
from dynroute.data.datasets import (
    DATASETS,
    DatasetSplit,
    DatasetSplits,
    absolute_dataset_name,
    dataset_names,
    is_dataset_name,
    load_dataset,
)
from dynroute.data.readers.common import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    resolve_cache_dir,
    resolve_data_dir,
)

_LAZY = {
    "AugmentParams": "dynroute.data.augment",
    "augment_batch": "dynroute.data.augment",
    "draw_params": "dynroute.data.augment",
    "shift_and_flip": "dynroute.data.augment",
    "BatchLoader": "dynroute.data.loader",
}

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetSplit",
    "DatasetSplits",
    "absolute_dataset_name",
    "dataset_names",
    "is_dataset_name",
    "load_dataset",
    "resolve_cache_dir",
    "resolve_data_dir",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dynroute.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
