"""Files to classify: images of any size and mode, and NumPy arrays, read as network input
exactly as a run's training images were (``dynroute predict`` and ``dynroute serve``).

- An image file (PNG, JPEG, BMP, GIF, WebP, TIFF, ... whatever Pillow opens) is decoded as a
  user's image tree is for training (``dynroute.data.readers.image_tree.decode_image``):
  turned upright by its EXIF orientation, made RGB (grayscale repeated, alpha dropped,
  palettes expanded; 16-bit grayscale rounded to 8 bits first), resized to the run's square
  image size with Pillow's bilinear filter (stretched, not cropped), then gamma-decoded to
  linear intensity, (x / 255)^2.2 (``dynroute.data.datasets.to_linear``).
- An ``.npz`` file: each array with 3 or 4 axes holds images (NHW, NHWC or NCHW; uint8, or
  float intensities in [0, 1]); other arrays (labels, class names) are ignored. An ``.npy``
  file is one such array. They are read as an npz dataset's images
  (``dynroute.data.readers.npz_arrays.array_images``): resized the same way, uint8
  gamma-decoded, floats kept.

The built-in datasets' digits (``mnist``, ``hybrid``) are MNIST digits recoloured with a
random pair of colours each; files are read like the CIFAR images beside them, so a digit
is recognised when it looks like those (coloured strokes on a coloured ground).

Nothing here needs torch: an export is run on files without it.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynroute import gate
from dynroute.data.datasets import GAMMA, to_linear
from dynroute.data.readers.image_tree import decode_image
from dynroute.data.readers.npz_arrays import ArrayFile, array_images
from dynroute.errors import DynrouteError
from dynroute.gate import file_kind, printable

if TYPE_CHECKING:
    from PIL import Image

ARRAY_SUFFIXES = (".npz", ".npy")
#: Files this small on a side are still classified (upscaled); training refuses them.
MIN_SIDE = 1


@dataclass(frozen=True)
class Failure:
    """A file (or path) that could not be read, and why."""

    name: str
    reason: str


@dataclass
class Batch:
    """Readable inputs in file order: ``names`` (one per example; an array's examples are
    ``file:array[i]``), ``images`` (N, 3, size, size) float32, and the files that failed."""

    names: list[str]
    images: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    #: Files read (or failed) since the previous batch, for a progress bar.
    files: int = 0


def preprocessing(dataset: str | None, image_size: int) -> dict[str, Any]:
    """What is done to a file before the network sees it (recorded in an export's manifest)."""
    record: dict[str, Any] = {
        "image_size": image_size,
        "layout": "NCHW float32 (N, 3, size, size), linear intensity in [0, 1]",
        "image_files": (
            "EXIF orientation applied; RGB (grayscale repeated, alpha dropped, 16-bit "
            "grayscale rounded to 8 bits); Pillow bilinear resize to size x size, "
            "stretched, not cropped; then gamma-decoded, (x / 255) ** gamma"
        ),
        "gamma": GAMMA,
        "arrays": (
            "NHW, NHWC or NCHW; uint8 resized like image files then gamma-decoded; float "
            "(intensities in [0, 1]) resized per channel and kept"
        ),
        "dataset": dataset,
    }
    if dataset in ("mnist", "hybrid"):
        record["note"] = (
            "the training digits were MNIST digits recoloured with a random pair of colours "
            "each; files are read like the CIFAR images"
        )
    return record


def expand(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Failure]]:
    """The files named, and every file below the folders named (hidden ones skipped, sorted
    by path, each folder walked once however many links lead to it: ``dynroute.gate.walk``);
    a path that does not exist, or is no regular file (a FIFO, a device), is a failure named,
    never opened."""
    files: list[Path] = []
    failures: list[Failure] = []
    for given in paths:
        path = Path(given)
        try:
            status = path.stat()
        except OSError:
            failures.append(Failure(printable(str(path)), "no such file or folder"))
            continue
        if stat.S_ISDIR(status.st_mode):
            try:
                found, odd = gate.walk(path, hidden=(".",))
            except DynrouteError as exc:
                failures.append(Failure(printable(str(path)), str(exc)))
                continue
            files += found
            failures += [
                Failure(printable(str(p)), f"{kind}, not a file: skipped") for p, kind in odd
            ]
        elif stat.S_ISREG(status.st_mode):
            files.append(path)
        else:
            failures.append(
                Failure(printable(str(path)), f"{file_kind(status.st_mode)}, not a file")
            )
    return files, failures


def read_image_bytes(blob: bytes | Image.Image, name: str, size: int) -> np.ndarray:
    """One image file's bytes (or the file, opened by Pillow and not yet decoded) as
    (3, size, size) float32 network input."""
    return to_linear(decode_image(blob, name, size, min_size=MIN_SIDE, wide=True))


#: An array to classify may hold at most this many values (its images, before resizing).
MAX_ARRAY_VALUES = 1 << 28


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz or .npy file, through the gate: a regular file of bounded size,
    each array's declared size checked against the bytes that hold it (and a compressed
    member's expansion bounded) before anything is allocated."""
    status = path.stat()
    gate.check_regular(path, status)
    if status.st_size > gate.MAX_ARRAY_FILE_BYTES:
        raise DynrouteError(
            f"{path}: {status.st_size} bytes, more than the limit of {gate.MAX_ARRAY_FILE_BYTES}"
        )
    if path.suffix.lower() == ".npz":
        with ArrayFile(path) as arrays:
            return {name: np.asarray(arrays.get(name)) for name in sorted(arrays.names)}
    with gate.open_regular(path) as handle:
        try:
            shape, dtype, declared = gate.npy_header(handle)
        except (ValueError, EOFError) as exc:
            raise DynrouteError(f"{path}: cannot read the array ({exc})") from None
        if declared > status.st_size:
            raise DynrouteError(
                f"{path} declares shape {shape} of {dtype} ({declared} bytes) but holds only "
                f"{status.st_size} bytes; the file is damaged or forged"
            )
        handle.seek(0)
        try:
            return {"": np.load(handle, allow_pickle=False)}
        except (ValueError, EOFError) as exc:
            raise DynrouteError(f"{path}: cannot read the array ({exc})") from None


def read_arrays(path: Path, size: int) -> tuple[list[str], np.ndarray]:
    """The images of an .npz or .npy file: names and (N, 3, size, size) float32."""
    try:
        arrays = _load_arrays(path)
    except OSError as exc:
        raise DynrouteError(f"{path}: cannot read the arrays ({exc.strerror or exc})") from None
    names: list[str] = []
    parts: list[np.ndarray] = []
    for key, array in arrays.items():
        if array.ndim not in (3, 4):
            continue
        where = f"{path}:{key}" if key else str(path)
        if array.size > MAX_ARRAY_VALUES:
            raise DynrouteError(
                f"{where}: {array.size} values, more than the limit of {MAX_ARRAY_VALUES} "
                "(MAX_ARRAY_VALUES); split it into smaller files"
            )
        if len(array) == 0:
            continue
        images = to_linear(array_images(array, where, size))
        names += [f"{where}[{i}]" for i in range(len(images))]
        parts.append(images)
    if not parts:
        shapes = ", ".join(f"{k or 'array'} {a.shape}" for k, a in arrays.items()) or "nothing"
        raise DynrouteError(
            f"{path}: no image (an array with 3 or 4 axes: NHW, NHWC or NCHW, and at least one "
            f"image) in it; found {shapes}"
        )
    return names, np.concatenate(parts)


def read_file(path: Path, size: int) -> tuple[list[str], np.ndarray]:
    """One file's examples: names and (N, 3, size, size) float32; ``DynrouteError`` if it is
    unreadable."""
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return read_arrays(path, size)
    blob = gate.read_bytes(path, gate.MAX_IMAGE_FILE_BYTES)
    return [str(path)], read_image_bytes(blob, str(path), size)[None]


def _read(path: Path, size: int) -> tuple[list[str], np.ndarray] | Failure:
    try:
        return read_file(path, size)
    except DynrouteError as exc:
        return Failure(printable(str(path)), printable(str(exc).removeprefix(f"{path}: ")))
    except MemoryError:
        return Failure(printable(str(path)), "too large to decode")


def _read_ahead(files: Sequence[Path], size: int, workers: int, window: int) -> Iterator[Any]:
    """``_read`` of every file in order, ``workers`` threads at most ``window`` files ahead."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[Future] = deque()
        for path in files:
            pending.append(pool.submit(_read, path, size))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batches(files: Sequence[Path], size: int, batch_size: int, workers: int = 1) -> Iterator[Batch]:
    """The examples of ``files`` in batches of ``batch_size`` (the last may be smaller), in
    file order. ``workers`` threads decode ahead of the consumer (Pillow and NumPy release
    the GIL), a few batches' worth at most. Unreadable files come back as failures with
    the batch that would have held them."""
    if batch_size < 1:
        raise DynrouteError(f"`batch_size` must be at least 1, got {batch_size}")
    names: list[str] = []
    chunks: deque[np.ndarray] = deque()
    failures: list[Failure] = []

    done = 0

    def take() -> Batch:
        nonlocal failures, done
        taken = names[:batch_size]
        del names[:batch_size]
        parts, need = [], len(taken)
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
            else:
                parts.append(chunk[:need])
                chunks[0] = chunk[need:]
            need -= len(parts[-1])
        images = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else None
        if images is None:
            images = np.empty((0, 3, size, size), np.float32)
        batch = Batch(taken, np.ascontiguousarray(images), failures, done)
        failures, done = [], 0
        return batch

    window = max(2 * batch_size, 4 * workers)
    for result in _read_ahead(files, size, workers, window):
        done += 1
        if isinstance(result, Failure):
            failures.append(result)
            continue
        names.extend(result[0])
        chunks.append(result[1])
        while len(names) >= batch_size:
            yield take()
    while names or failures or done:
        yield take()
