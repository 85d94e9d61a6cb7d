"""Datasets of the paper (MNIST, CIFAR-10 and derived sets) and the user's own (folder:PATH,
npz:PATH), caching and augmentation."""

from dynroute.data import user_data  # noqa: F401  (registers folder:PATH and npz:PATH)
from dynroute.data.augment import AugmentParams, augment_batch, draw_params, shift_and_flip
from dynroute.data.datasets import (
    DATASETS,
    DatasetSplit,
    DatasetSplits,
    absolute_dataset_name,
    dataset_names,
    is_dataset_name,
    load_dataset,
)
from dynroute.data.loader import BatchLoader
from dynroute.data.readers.common import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    resolve_cache_dir,
    resolve_data_dir,
)

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "AugmentParams",
    "BatchLoader",
    "DatasetSplit",
    "DatasetSplits",
    "absolute_dataset_name",
    "augment_batch",
    "dataset_names",
    "draw_params",
    "is_dataset_name",
    "load_dataset",
    "resolve_cache_dir",
    "resolve_data_dir",
    "shift_and_flip",
]
