"""Datasets from the user's own files: ``folder:PATH`` (an image tree or .zip) and ``npz:PATH``.

They get the built-in datasets' guarantees (one verified cache folder per source content,
seed, validation size, image size and test fraction; a manifest with the source's
checksum; atomic builds) through ``dynroute.data.cache``. Choices (README, "Your own
images or arrays"):

- Pixels: 8-bit pixels (image files, uint8 arrays) are gamma-decoded like CIFAR's,
  (x/255)^2.2, because the paper, the models' settings and the mean-colour fill of the
  augmentation all work in linear intensity and ordinary images are gamma-encoded like
  CIFAR's. Float arrays are kept as given: they are taken to be intensities in [0, 1]
  already. Images are resized to ``image_size`` square (Pillow bilinear, antialiased when
  shrinking; not cropped, so non-square images are stretched).
- Flips: every user class counts as mirror-symmetric (flipped with p = 0.5 in training),
  unless an npz says otherwise in a ``mirror_symmetric`` array.
- Fingerprints: a folder by the MD5 of its image files' names, sizes and modification times
  (cheap, like the built-in image-folder copies); a .zip, .npz or .npy folder by the MD5 of
  the files' bytes. The absolute path is part of the cache key too, so a manifest never
  names another copy.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.cache import FORMAT_VERSION, CacheLayout, array_path, cached_build, load_split
from dynroute.data.datasets import (
    CHUNK,
    DATASET_METADATA,
    DEFAULT_TEST_FRACTION,
    TEST_SPLIT_STREAM,
    DatasetSplit,
    DatasetSplits,
    cache_key,
    new_image_array,
    stratified_positions,
    validation_positions,
)
from dynroute.data.formats.pixels import to_linear
from dynroute.data.readers.common import (
    SPLITS,
    Provenance,
    RawData,
    Source,
    cannot_read,
    expand_user,
)
from dynroute.data.readers.image_tree import ImageFolderReader, ImageZipReader
from dynroute.data.readers.npz_arrays import NpzReader
from dynroute.data.registry import register_source_kind

logger = logging.getLogger(__name__)

# Manifest entries of a user dataset, on top of the built-in datasets' ones.
USER_METADATA = {
    **DATASET_METADATA,
    "image_size": int,
    "test_fraction": (int, float, type(None)),  # None: the source has its own test split
    "source_layout": str,
    "source_pixels": str,
    "skipped_files": int,
    "skipped_examples": [str],
}
SKIPPED_EXAMPLES = 5


@dataclass(frozen=True)
class _Found:
    """A user source, checked and fingerprinted before any image is decoded."""

    source: Source
    provenance: Provenance
    class_names: tuple[str, ...]
    mirror_symmetric: tuple[bool, ...]
    own_test_split: bool
    skipped: tuple[str, ...] = ()


def _find(name: str, kind: str, path: Path, image_size: int) -> _Found:
    """Check the layout (and, for arrays, the labels) and fingerprint the source."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:
        raise cannot_read(path, exc) from exc
    if not exists:
        raise DynrouteError(f"dataset {name}: {path} does not exist")
    if kind == "npz":
        reader = NpzReader(image_size=image_size, kind="npy-folder" if is_dir else "npz")
        source = Source(kind, path, reader)
        labels = reader.labels(source)
        count = len(labels.class_names)
        mirror = labels.mirror_symmetric or (True,) * count
        return _Found(source, reader.identify(source), labels.class_names, mirror, True)
    if not is_dir and path.suffix.lower() != ".zip":
        raise DynrouteError(f"dataset {name}: {path} is neither a folder nor a .zip file")
    tree_reader = ImageFolderReader if is_dir else ImageZipReader
    discover = tree_reader(
        dataset=kind, image_size=image_size, resize=True, classes=(), split_folders=None
    )
    listing, scanned = discover.scan(Source(kind, path, discover))
    # The classes found become the reader's, so a later read refuses a changed tree.
    reader = replace(discover, classes=listing.classes, split_folders=listing.split_folders)
    source = Source(kind, path, reader)
    provenance = Provenance(source, scanned.checksum, scanned.checks)
    mirror = (True,) * len(listing.classes)
    return _Found(
        source, provenance, listing.classes, mirror, listing.split_folders, listing.skipped
    )


def _read(found: _Found, test_fraction: float | None, seed: int) -> tuple[RawData, dict]:
    """Decoded images (uint8 or float32, resized) and what was detected, for the manifest."""
    reader = found.source.reader
    details: dict[str, Any] = {"skipped_files": 0, "skipped_examples": []}
    if isinstance(reader, NpzReader):
        images, provenance = reader.read(found.source)
        raw = images.raw
        shapes = ", ".join(f"{name} {shape}" for name, shape in images.shapes.items())
        details["source_layout"] = f"{images.layout} ({shapes})"
        details["source_pixels"] = images.dtype
    else:  # an image tree
        raw, provenance = reader.read(found.source, False)
        details["source_layout"] = (
            "train/<class>/ and test/<class>/ folders"
            if found.own_test_split
            else f"<class>/ folders, split by test fraction {test_fraction} (seed {seed})"
        )
        details["source_pixels"] = "8-bit image files"
        details["skipped_files"] = len(found.skipped)
        details["skipped_examples"] = list(found.skipped[:SKIPPED_EXAMPLES])
    if provenance.checksum != found.provenance.checksum:
        raise DynrouteError(f"{found.source.path} changed while it was being read; retry")
    return raw, details


@dataclass(frozen=True)
class _SplitRows:
    """The examples of one split: positions into a decoded array."""

    images: np.ndarray
    labels: np.ndarray
    positions: np.ndarray


def _split(
    raw: RawData, found: _Found, test_fraction: float, seed: int, validation_size: int
) -> dict[str, _SplitRows]:
    """Train, validation (if asked for) and test, each drawn stratified and seeded."""
    everything = np.arange(len(raw.train_labels))
    if found.own_test_split:
        train = _SplitRows(raw.train_images, raw.train_labels, everything)
        test = _SplitRows(raw.test_images, raw.test_labels, np.arange(len(raw.test_labels)))
    else:
        rng = np.random.default_rng([seed, TEST_SPLIT_STREAM])
        size = round(test_fraction * len(everything))
        # Every class keeps at least one training image.
        held = stratified_positions(raw.train_labels, size, rng, keep=1) if size else everything[:0]
        if held.size == 0:
            raise DynrouteError(
                f"{found.source.path}: the test split would be empty (test fraction "
                f"{test_fraction} of {len(everything)} images); add images or raise it"
            )
        test = _SplitRows(raw.train_images, raw.train_labels, held)
        train = _SplitRows(raw.train_images, raw.train_labels, np.setdiff1d(everything, held))
    parts = {"train": train, "test": test}
    if validation_size:
        chosen = validation_positions(train.labels[train.positions], validation_size, seed)
        kept = np.delete(train.positions, chosen)
        parts["validation"] = replace(train, positions=train.positions[chosen])
        parts["train"] = replace(train, positions=kept)
    return parts


def _write(folder: Path, split: str, part: _SplitRows, image_size: int) -> None:
    """float32 linear-intensity pixels chunk by chunk into a .npy memmap, then the labels."""
    out = new_image_array(folder, split, len(part.positions), image_size)
    for start in range(0, len(part.positions), CHUNK):
        chunk = part.images[part.positions[start : start + CHUNK]]
        out[start : start + len(chunk)] = to_linear(chunk)
    out.flush()
    del out
    np.save(array_path(folder, split, "labels"), part.labels[part.positions].astype(np.int64))


def _image_format(pixels_are_8_bit: bool, size: int) -> str:
    shape = f"float32 NCHW (N, 3, {size}, {size})"
    resize = f"resized to {size}x{size} (bilinear, stretched), grayscale repeated to RGB"
    if pixels_are_8_bit:
        gamma = "8-bit pixels gamma-decoded, (x/255)^2.2, like CIFAR"
        return f"{shape}, linear intensity in [0, 1]: {gamma}; {resize}"
    return f"{shape} in [0, 1]: float pixels kept as given (no gamma); {resize}"


@register_source_kind("folder", "an image tree or .zip")
@register_source_kind("npz", "arrays")
def load_user_dataset(
    name: str,
    kind: str,
    path_text: str,
    *,
    cache_dir: Path,
    validation_size: int,
    seed: int,
    image_size: int,
    test_fraction: float,
) -> DatasetSplits:
    """Load ``folder:PATH`` or ``npz:PATH`` (see ``load_dataset``), building it on first use."""
    path = expand_user(path_text, f"dataset {kind}:")
    found = _find(name, kind, path, image_size)
    if found.own_test_split and test_fraction != DEFAULT_TEST_FRACTION:
        raise DynrouteError(
            f"{path} has its own test split; a test fraction applies only to a folder:PATH "
            "tree without train/ and test/ folders"
        )
    fraction = None if found.own_test_split else test_fraction
    checksum = found.provenance.checksum
    key = cache_key(
        [FORMAT_VERSION, kind, str(path), checksum, seed, validation_size, image_size, fraction]
    )
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)[:40]
    target = cache_dir / f"{kind}-{slug}-{key}"
    splits = ("train", "validation", "test") if validation_size else SPLITS
    classes = found.class_names
    layout = CacheLayout(
        splits, "float32", (3, image_size, image_size), len(classes), USER_METADATA
    )

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        logger.info("building dataset %s into %s", name, target)
        raw, details = _read(found, fraction, seed)
        logger.info("%s: %s, %s pixels", name, details["source_layout"], details["source_pixels"])
        if details["skipped_files"]:
            logger.warning(
                "%s: skipped %d files that are not images or lie outside the class folders "
                "(e.g. %s)",
                name,
                details["skipped_files"],
                ", ".join(details["skipped_examples"]),
            )
        parts = _split(raw, found, test_fraction, seed, validation_size)
        for split, part in parts.items():
            _write(folder, split, part, image_size)
        what = "images" if kind == "folder" else "arrays"
        return {
            "dataset": f"{kind}:{path}",
            "description": f"your {what} in {path}, {len(classes)} classes",
            "class_names": list(classes),
            "mirror_symmetric": list(found.mirror_symmetric),
            "seed": seed,
            "validation_size": validation_size,
            "sources": [found.provenance.as_dict()],
            "checksum_mismatch_allowed": False,
            "image_format": _image_format(raw.train_images.dtype == np.uint8, image_size),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 2),
            "image_size": image_size,
            "test_fraction": fraction,
            **details,
        }

    manifest = cached_build(target, key, layout, build)
    loaded = {
        split: DatasetSplit(*load_split(target, split), classes, found.mirror_symmetric)
        for split in splits
    }
    return DatasetSplits(
        name, loaded["train"], loaded.get("validation"), loaded["test"], manifest, target
    )
