"""A user's arrays: a NumPy ``.npz`` holding ``x_train, y_train, x_test, y_test``, or a folder
of ``x_train.npy, y_train.npy, x_test.npy, y_test.npy`` (``npz:PATH``).

Optional arrays: ``class_names`` (strings, one per class) and ``mirror_symmetric``
(booleans, one per class: may the class be flipped in augmentation). Images are uint8
(0..255) or float (already in [0, 1]), NHWC, NCHW or NHW (grayscale), with 1 or 3
channels; they come out as (N, 3, size, size) in the input's dtype class (uint8 or
float32), resized with the same Pillow filter as image files so a PNG folder and an npz of
the same pixels give the same dataset: the arrays are read and laid out by the input
formats' own code (``dynroute.data.formats.arrays``, ``formats.pixels``), which
``dynroute predict`` and ``dynroute serve`` read arrays with too. Everything is checked
with a one-line error that names the array, because a wrong layout or label convention
otherwise trains silently on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.formats.arrays import ArrayFile
from dynroute.data.formats.pixels import array_images
from dynroute.data.readers.common import (
    FileCheck,
    Provenance,
    RawData,
    Source,
    check_label_count,
    check_labels,
    combined_checksum,
    md5_file,
)
from dynroute.nn.registry import MIN_IMAGE_SIZE

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("class_names", "mirror_symmetric")


@dataclass(frozen=True)
class ArrayLabels:
    """The labels and class description of an array dataset, read without the images."""

    train: np.ndarray
    test: np.ndarray
    class_names: tuple[str, ...]
    mirror_symmetric: tuple[bool, ...] | None  # None: not given


@dataclass(frozen=True)
class ArrayImages:
    """Decoded arrays and what was detected, for the manifest."""

    raw: RawData  # images (N, 3, size, size) uint8 or float32, labels int64
    labels: ArrayLabels
    layout: str  # NHWC, NCHW or NHW
    dtype: str  # of the stored images
    shapes: dict[str, tuple[int, ...]]  # of x_train and x_test as stored


def _labels(array: np.ndarray, where: str) -> np.ndarray:
    """One integer label per image; (N, 1) columns are accepted, one-hot rows are not."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DynrouteError(
            f"{where} has shape {array.shape}; expected one integer label per image, shape (N,) "
            "(one-hot labels: store y.argmax(1))"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise DynrouteError(
            f"{where} holds {array.dtype} labels; labels must be integers 0..C-1 "
            "(store y.astype(np.int64))"
        )
    return np.asarray(array, dtype=np.int64)


def _strings(array: np.ndarray, where: str) -> tuple[str, ...]:
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise DynrouteError(
            f"{where} must be a 1-D array of strings, got {array.dtype} {array.shape}"
        )
    names = tuple(
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        for item in array.tolist()
    )
    if len(set(names)) != len(names) or not all(names):
        raise DynrouteError(f"{where} must hold distinct, non-empty names")
    return names


def _dataset_files(arrays: ArrayFile, path: Path) -> list[Path]:
    """The files whose bytes make up the dataset, for its checksum: the .npz, or the
    dataset's arrays in a folder of .npy files."""
    if arrays.handle is not None:
        return [path]
    wanted = (*ARRAYS, *OPTIONAL_ARRAYS)
    return [path / f"{name}.npy" for name in wanted if name in arrays.names]


@dataclass(frozen=True, kw_only=True)
class NpzReader:
    """``x_train, y_train, x_test, y_test`` from one .npz file or a folder of .npy files."""

    dataset: str = "npz"
    image_size: int = 32
    kind: str = "npz"  # "npy-folder" for a folder of .npy files

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def identify(self, source: Source, allow_checksum_mismatch: bool = False) -> Provenance:
        """MD5 of every file's bytes: no official checksums exist, so the flag changes nothing."""
        with ArrayFile(source.path) as arrays:
            files = _dataset_files(arrays, source.path)
            checks = tuple(FileCheck(path.name, md5_file(path), None) for path in files)
        checksum = checks[0].md5 if len(checks) == 1 else combined_checksum(checks)
        return Provenance(source, checksum, checks)

    def labels(self, source: Source) -> ArrayLabels:
        """Labels and class names, checked; cheap (the images are not read)."""
        with ArrayFile(source.path) as arrays:
            return self._labels(arrays)

    def _labels(self, arrays: ArrayFile) -> ArrayLabels:
        arrays.require(*ARRAYS, needed=f"; an npz dataset needs {', '.join(ARRAYS)}")
        train = _labels(arrays.get("y_train"), arrays.where("y_train"))
        test = _labels(arrays.get("y_test"), arrays.where("y_test"))
        if len(test) == 0:
            raise DynrouteError(f"{arrays.where('y_test')} is empty: the test split would be empty")
        if len(train) == 0:
            raise DynrouteError(f"{arrays.where('y_train')} is empty: no training images")
        if "class_names" in arrays.names:
            where = arrays.where("class_names")
            class_names = _strings(arrays.get("class_names"), where)
        else:
            top = max(int(train.max()), int(test.max()))
            check_label_count(top, arrays.where("y_train" if top == int(train.max()) else "y_test"))
            class_names = tuple(str(label) for label in range(max(top, 0) + 1))
        count = len(class_names)
        for split, labels in (("y_train", train), ("y_test", test)):
            check_labels(labels, count, arrays.where(split))
        if count < 2:
            raise DynrouteError(
                f"{arrays.where('y_train')}: only one class; a classifier needs at least two"
            )
        missing = np.flatnonzero(np.bincount(train, minlength=count) == 0)
        if missing.size:
            raise DynrouteError(
                f"{arrays.where('y_train')}: no image of class {missing[0]} "
                f"({class_names[missing[0]]}); labels must be 0..{count - 1} with every class "
                "present (1-based labels? subtract 1)"
            )
        mirror = None
        if "mirror_symmetric" in arrays.names:
            flags = arrays.get("mirror_symmetric")
            if flags.dtype != np.bool_ or flags.shape != (count,):
                raise DynrouteError(
                    f"{arrays.where('mirror_symmetric')} must be {count} booleans (one per "
                    f"class), got {flags.dtype} {flags.shape}"
                )
            mirror = tuple(bool(flag) for flag in flags)
        return ArrayLabels(train, test, class_names, mirror)

    def read(self, source: Source) -> tuple[ArrayImages, Provenance]:
        """Images and labels, checked; the provenance checksums the files just read."""
        provenance = self.identify(source)
        with ArrayFile(source.path) as arrays:
            labels = self._labels(arrays)
            images, layouts, shapes, dtypes = {}, {}, {}, {}
            for split, split_labels in (("train", labels.train), ("test", labels.test)):
                name = f"x_{split}"
                stored = arrays.get(name)
                if len(stored) != len(split_labels):
                    raise DynrouteError(
                        f"{arrays.where(name)} holds {len(stored)} images but y_{split} has "
                        f"{len(split_labels)} labels"
                    )
                images[split], layouts[split] = array_images(
                    stored, arrays.where(name), self.image_size, MIN_IMAGE_SIZE
                )
                shapes[name], dtypes[name] = tuple(stored.shape), stored.dtype.name
        if layouts["train"] != layouts["test"] or images["train"].dtype != images["test"].dtype:
            stored = ", ".join(f"{name} {dtypes[name]} {shapes[name]}" for name in shapes)
            raise DynrouteError(
                f"{source.path}: x_train and x_test differ in layout or pixel type ({stored}); "
                "store both alike"
            )
        raw = RawData(images["train"], labels.train, images["test"], labels.test)
        found = ArrayImages(raw, labels, layouts["train"], dtypes["x_train"], shapes)
        return found, provenance
