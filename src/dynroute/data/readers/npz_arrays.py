"""A user's arrays: a NumPy ``.npz`` holding ``x_train, y_train, x_test, y_test``, or a folder
of ``x_train.npy, y_train.npy, x_test.npy, y_test.npy`` (``npz:PATH``).

Optional arrays: ``class_names`` (strings, one per class) and ``mirror_symmetric``
(booleans, one per class: may the class be flipped in augmentation). Images are uint8
(0..255) or float (already in [0, 1]), NHWC, NCHW or NHW (grayscale), with 1 or 3
channels; they come out as (N, 3, size, size) in the input's dtype class (uint8 or
float32), resized with the same Pillow filter as image files so a PNG folder and an npz of
the same pixels give the same dataset. Everything is checked with a one-line error that
names the array, because a wrong layout or label convention otherwise trains silently on
garbage.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image

from dynroute.data.readers.common import (
    FileCheck,
    Provenance,
    RawData,
    Source,
    cannot_read,
    check_label_count,
    check_labels,
    check_regular,
    combined_checksum,
    expansion_problem,
    md5_file,
    open_regular,
)
from dynroute.data.readers.image_tree import resize_square
from dynroute.errors import DynrouteError
from dynroute.gate import npy_header
from dynroute.nn.registry import MIN_IMAGE_SIZE

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL_ARRAYS = ("class_names", "mirror_symmetric")
# Float pixels may stray this far outside [0, 1] (rounding); they are then clipped.
FLOAT_TOLERANCE = 1e-3
CHANNELS = (1, 3)


class ArrayFile:
    """Named arrays of an .npz file or of a folder of .npy files, never unpickled.

    Each array's header (shape, dtype) is checked against the bytes that hold it before
    the array is read, so a file that declares more than it holds, or a compressed member
    that expands far beyond its size (a zip bomb), is refused before anything is allocated.
    """

    def __init__(self, path: Path):
        self.path = path
        self.npz: np.lib.npyio.NpzFile | None = None
        self.handle = None
        if path.is_dir():
            try:
                self.names = {p.stem for p in path.glob("*.npy")}
            except OSError as exc:
                raise cannot_read(path, exc) from exc
            return
        self.handle = open_regular(path)
        try:
            self.npz = np.load(self.handle, allow_pickle=False)
        except OSError as exc:
            self.handle.close()
            raise cannot_read(path, exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile) as exc:
            self.handle.close()
            raise DynrouteError(f"{path} is not a readable .npz file ({exc})") from exc
        if not isinstance(self.npz, np.lib.npyio.NpzFile):
            self.handle.close()
            raise DynrouteError(f"{path} holds a single array; save the dataset with np.savez")
        self.names = set(self.npz.files)

    def files(self) -> list[Path]:
        """The files whose bytes make up the dataset, for its checksum."""
        if self.npz is not None:
            return [self.path]
        wanted = (*ARRAYS, *OPTIONAL_ARRAYS)
        return [self.path / f"{name}.npy" for name in wanted if name in self.names]

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.npz is not None else str(self.path / f"{name}.npy")

    def require(self, *names: str) -> None:
        for name in names:
            if name not in self.names:
                raise DynrouteError(
                    f"{self.path}: no {name} array; an npz dataset needs {', '.join(ARRAYS)} "
                    f"(found: {', '.join(sorted(self.names)) or 'nothing'})"
                )

    def get(self, name: str) -> np.ndarray:
        self.require(name)
        try:
            if self.npz is not None:
                self._check_member(name)
                return self.npz[name]
            path = self.path / f"{name}.npy"
            check_regular(path, path.stat())  # never opens a FIFO; refuses a sparse file
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except OSError as exc:
            raise cannot_read(self.where(name), exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DynrouteError(f"{self.where(name)}: cannot read the array ({exc})") from exc

    def _check_member(self, name: str) -> None:
        """The member's declared expansion and its header's shape, before numpy allocates."""
        assert self.npz is not None
        member = name if name in self.npz.zip.namelist() else f"{name}.npy"
        info = self.npz.zip.getinfo(member)
        problem = expansion_problem(info.file_size, info.compress_size)
        if problem:
            raise DynrouteError(
                f"{self.where(name)} expands to {problem}: refused before expanding it "
                "(a zip bomb?); save the arrays with np.savez"
            )
        with self.npz.zip.open(info) as handle:
            shape, dtype, declared = npy_header(handle)
        if declared > info.file_size:
            raise DynrouteError(
                f"{self.where(name)} declares shape {shape} of {dtype} ({declared} bytes) but "
                f"holds only {info.file_size} bytes; the file is damaged or forged"
            )

    def close(self) -> None:
        if self.npz is not None:
            self.npz.close()
        if self.handle is not None:
            self.handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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


def channel_layout(shape: tuple[int, ...], where: str) -> str:
    """NHW, NHWC or NCHW, from which axis has 1 or 3 entries; ambiguous shapes are refused."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DynrouteError(
            f"{where} has shape {shape}; expected images as (N, H, W, C), (N, C, H, W) or (N, H, W)"
        )
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if first and last:
        raise DynrouteError(
            f"{where} has shape {shape}: ambiguous layout, axis 1 and axis 3 could both hold the "
            "channels; store NHWC or NCHW images whose height and width are not 1 or 3"
        )
    if not first and not last:
        raise DynrouteError(
            f"{where} has shape {shape}: no channel axis of size 1 or 3 (NHWC or NCHW); "
            "only grayscale and RGB images are supported"
        )
    return "NHWC" if last else "NCHW"


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """NHWC uint8 or float32 -> (N, size, size, C), one channel at a time through Pillow."""
    count, height, width, channels = images.shape
    if (height, width) == (size, size):
        return images
    out = np.empty((count, size, size, channels), dtype=images.dtype)
    for index in range(count):
        for channel in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(images[index, :, :, channel]))
            out[index, :, :, channel] = np.asarray(resize_square(plane, size))
    return out


def _images(array: np.ndarray, where: str, size: int) -> tuple[np.ndarray, str]:
    """(N, 3, size, size) uint8 or float32 (clipped to [0, 1]) and the layout detected."""
    layout = channel_layout(array.shape, where)
    if layout == "NHW":
        nhwc = array[..., None]
    elif layout == "NCHW":
        nhwc = array.transpose(0, 2, 3, 1)
    else:
        nhwc = array
    height, width = nhwc.shape[1:3]
    if min(height, width) < MIN_IMAGE_SIZE:
        raise DynrouteError(
            f"{where}: images are {width}x{height} pixels, too small "
            f"(at least {MIN_IMAGE_SIZE} on a side)"
        )
    if np.issubdtype(array.dtype, np.floating):
        nhwc = np.asarray(nhwc, dtype=np.float32)
        if not np.isfinite(nhwc).all():
            raise DynrouteError(f"{where} holds NaN or infinite pixels")
        low, high = (float(nhwc.min()), float(nhwc.max())) if nhwc.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise DynrouteError(
                f"{where}: float pixels range from {low:g} to {high:g}; float images must lie in "
                "[0, 1] (store 8-bit images as uint8, or divide by 255)"
            )
        nhwc = np.clip(nhwc, 0.0, 1.0)
    elif array.dtype != np.uint8:
        raise DynrouteError(
            f"{where} holds {array.dtype} pixels; expected uint8 (0-255) or float (0-1)"
        )
    resized = _resize(np.asarray(nhwc), size)
    if resized.shape[3] == 1:
        resized = np.repeat(resized, 3, axis=3)
    return np.ascontiguousarray(resized.transpose(0, 3, 1, 2)), layout


def array_images(array: np.ndarray, where: str, size: int) -> np.ndarray:
    """A user's image array (NHWC, NCHW or NHW; uint8 or float in [0, 1]) as (N, 3, size,
    size), read exactly as an npz dataset's images are; ``where`` names it in errors."""
    return _images(array, where, size)[0]


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
            checks = tuple(FileCheck(path.name, md5_file(path), None) for path in arrays.files())
        checksum = checks[0].md5 if len(checks) == 1 else combined_checksum(checks)
        return Provenance(source, checksum, checks)

    def labels(self, source: Source) -> ArrayLabels:
        """Labels and class names, checked; cheap (the images are not read)."""
        with ArrayFile(source.path) as arrays:
            return self._labels(arrays)

    def _labels(self, arrays: ArrayFile) -> ArrayLabels:
        arrays.require(*ARRAYS)
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
                images[split], layouts[split] = _images(stored, arrays.where(name), self.image_size)
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
