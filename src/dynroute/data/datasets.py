"""The paper's derived datasets, built once into a memory-mappable cache.

Datasets (docs/method.md §6): ``mnist`` (ten recoloured digits), ``cifar10``,
``cifar5`` (cat, deer, dog, horse, other), ``cifar2`` (other, horse) and
``hybrid`` (recoloured digits 0-4 plus CIFAR airplane, automobile, deer, frog,
horse). Images are float32 NCHW (N, 3, 32, 32) in linear intensity [0, 1].

The cache holds one folder per (dataset, source checksums, seed, validation
size, format version), built and verified by ``dynroute.data.cache``; decoded
sources are cached the same way under ``sources/`` so datasets share one decode.

A user's own data is named ``folder:PATH`` (an image tree or .zip) or ``npz:PATH``
(arrays); ``dynroute.data.user_data`` builds those through the same cache (it registers the
``folder`` and ``npz`` kinds in ``dynroute.data.registry``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.cache import (
    FORMAT_VERSION,
    HASH_ALGORITHM,
    CacheLayout,
    array_path,
    cached_build,
    load_split,
)
from dynroute.data.formats.pixels import (  # noqa: F401  (GAMMA, to_linear: re-exported)
    GAMMA,
    gamma_decode,
    to_linear,
)
from dynroute.data.readers.common import (
    PROVENANCE_SCHEMA,
    SPLITS,
    Provenance,
    RawData,
    Source,
    check_labels,
    expand_user,
    resolve_cache_dir,
    resolve_data_dir,
)
from dynroute.data.readers.mnist_idx import MNIST_DIGITS
from dynroute.data.registry import source_kind, source_kinds
from dynroute.data.sources import CIFAR_CLASSES, find_source, identify_source, read_source
from dynroute.nn.registry import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
IMAGE_SIZE = 32
DEFAULT_TEST_FRACTION = 0.2
MIN_COLOUR_DISTANCE = 0.3
CHUNK = 4096

# Seed streams, so colouring and the splits never share random numbers.
TRAIN_COLOUR_STREAM, TEST_COLOUR_STREAM, VALIDATION_STREAM, TEST_SPLIT_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class _SourcePart:
    """Examples taken from one source: source label -> dataset label (None keeps all)."""

    source: str
    labels: dict[int, int]
    others: int | None = None  # dataset label for source labels not listed


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    class_names: tuple[str, ...]
    parts: tuple[_SourcePart, ...]

    @property
    def mirror_symmetric(self) -> tuple[bool, ...]:
        """Flip-invariant classes: every CIFAR-derived class, never a digit."""
        flags = [True] * len(self.class_names)
        for part in self.parts:
            if part.source == "mnist":
                for label in part.labels.values():
                    flags[label] = False
        return tuple(flags)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(part.source for part in self.parts))

    @property
    def class_sources(self) -> tuple[str, ...]:
        """The source each label comes from (hybrid: "mnist" for digits, "cifar10" else),
        so statistics can tell kinds of image apart."""
        found: list[str | None] = [None] * len(self.class_names)
        for part in self.parts:
            for label in part.labels.values():
                found[label] = part.source
            if part.others is not None:
                found[part.others] = part.source
        return tuple(source or self.parts[0].source for source in found)


def _cifar_map(classes: list[str], offset: int = 0) -> dict[int, int]:
    return {CIFAR_CLASSES.index(name): offset + i for i, name in enumerate(classes)}


HYBRID_CIFAR = ["airplane", "automobile", "deer", "frog", "horse"]
CIFAR5_NAMED = ["cat", "deer", "dog", "horse"]

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist",
            "MNIST digits 0-9, resized to 32x32 and recoloured like the hybrid digits",
            tuple(str(d) for d in range(MNIST_DIGITS)),
            (_SourcePart("mnist", {d: d for d in range(MNIST_DIGITS)}),),
        ),
        DatasetSpec(
            "cifar10",
            "CIFAR-10, ten classes",
            CIFAR_CLASSES,
            (_SourcePart("cifar10", _cifar_map(list(CIFAR_CLASSES))),),
        ),
        DatasetSpec(
            "cifar5",
            "CIFAR-10 as cat, deer, dog, horse and other",
            (*CIFAR5_NAMED, "other"),
            (_SourcePart("cifar10", _cifar_map(CIFAR5_NAMED), others=len(CIFAR5_NAMED)),),
        ),
        DatasetSpec(
            "cifar2",
            "CIFAR-10 as other (label 0) vs. horse (label 1)",
            ("other", "horse"),
            (_SourcePart("cifar10", _cifar_map(["horse"], offset=1), others=0),),
        ),
        DatasetSpec(
            "hybrid",
            "recoloured MNIST digits 0-4 (labels 0-4) and CIFAR airplane, automobile, deer, "
            "frog, horse (labels 5-9)",
            (*(str(d) for d in range(5)), *HYBRID_CIFAR),
            (
                _SourcePart("mnist", {d: d for d in range(5)}),
                _SourcePart("cifar10", _cifar_map(HYBRID_CIFAR, offset=5)),
            ),
        ),
    )
}


def dataset_names() -> list[str]:
    """The built-in names accepted by ``load_dataset`` (besides ``folder:PATH``, ``npz:PATH``)."""
    return list(DATASETS)


def _unknown(name: str) -> DynrouteError:
    return DynrouteError(
        f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, "
        "or folder:PATH / npz:PATH for your own images or arrays"
    )


def split_dataset_name(name: str) -> tuple[str, str] | None:
    """(kind, path) of a ``folder:PATH`` or ``npz:PATH`` name, None for a built-in one.

    Purely syntactic, so configs can be checked without touching the disk; an unknown
    name or prefix, or an empty path, is a ``DynrouteError``.
    """
    if name in DATASETS:
        return None
    kind, colon, path = name.partition(":")
    if not colon:
        raise _unknown(name)
    if source_kind(kind) is None:
        kinds = " or ".join(f"{k.prefix}:PATH ({k.description})" for k in source_kinds())
        raise DynrouteError(
            f"unknown dataset prefix {kind + ':'!r} in {name!r}; use {kinds}, or one of: "
            f"{', '.join(DATASETS)}"
        )
    if not path.strip():
        raise DynrouteError(f"dataset {name!r} names no path; write {kind}:PATH")
    return kind, path


def is_dataset_name(name: str) -> bool:
    """Whether ``load_dataset`` accepts ``name`` syntactically (the path is not checked)."""
    try:
        split_dataset_name(name)
    except DynrouteError:
        return False
    return True


def absolute_dataset_name(name: str) -> str:
    """``name`` with a user path made absolute, so runs started elsewhere find the same data."""
    user = split_dataset_name(name)
    if user is None:
        return name
    kind, path = user
    return f"{kind}:{expand_user(path, f'dataset {kind}:')}"


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise _unknown(name) from None


@dataclass(frozen=True)
class DatasetSplit:
    """One split: memory-mapped float32 NCHW images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mirror_symmetric: tuple[bool, ...]

    def __post_init__(self) -> None:
        check_labels(np.asarray(self.labels), len(self.class_names), "dataset split labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()


@dataclass(frozen=True)
class DatasetSplits:
    """A loaded dataset; ``validation`` is None unless a validation size was asked for."""

    name: str
    train: DatasetSplit
    validation: DatasetSplit | None
    test: DatasetSplit
    manifest: dict[str, Any]
    path: Path

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def mirror_symmetric(self) -> tuple[bool, ...]:
        return self.train.mirror_symmetric

    @property
    def fingerprint(self) -> str | None:
        """What the data was built from, as a short hash: each source's checksum (an official
        copy of MNIST or CIFAR-10 counts as the official data, whichever layout it came in;
        a folder by its files' names, sizes and times, an archive or arrays by their bytes).
        A built-in dataset's name is part of it (cifar2 and cifar5 share their source); a
        user's path is not (the same file moved is the same data). A run records it, so that
        it is never resumed or evaluated on other data."""
        sources = self.manifest.get("sources")
        if not isinstance(sources, list) or not sources:
            return None
        tokens = sorted(_source_token(source) for source in sources)
        if self.name in DATASETS:
            tokens.insert(0, self.name)
        return _short_hash(";".join(tokens))

    @property
    def content_fingerprint(self) -> str | None:
        """The built arrays themselves, as a short hash (of the SHA-256 the cache verified):
        the same data in another folder, or with new modification times, has the same one."""
        hashes = self.manifest.get(HASH_ALGORITHM)
        if not isinstance(hashes, dict) or not hashes:
            return None
        return _short_hash(";".join(f"{name}:{digest}" for name, digest in sorted(hashes.items())))


def _source_token(source: dict[str, Any]) -> str:
    files = source.get("files") or []
    official = bool(files) and all(
        f.get("expected_md5") is not None and f.get("md5") == f.get("expected_md5") for f in files
    )
    if official:
        return f"{source.get('dataset')}:official"
    return f"{source.get('dataset')}:{source.get('kind')}:{source.get('checksum')}"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


# ------------------------------------------------------------------ transforms


def digit_colours(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-image colour pairs c0, c1 in [0,1]^3 with ||c1 - c0|| >= 0.3 (c1 redrawn)."""
    c0 = rng.random((count, 3))
    c1 = rng.random((count, 3))
    while True:
        redraw = np.flatnonzero(np.linalg.norm(c1 - c0, axis=1) < MIN_COLOUR_DISTANCE)
        if redraw.size == 0:
            return c0.astype(np.float32), c1.astype(np.float32)
        c1[redraw] = rng.random((redraw.size, 3))


def recolour_digits(images: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) digits -> float32 (N, 3, 32, 32): x/255, bilinear resize, c0+(c1-c0)x."""
    import torch  # only when a dataset is built: listing datasets needs no torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0)
    start = torch.from_numpy(c0)[:, :, None, None]
    span = torch.from_numpy(c1 - c0)[:, :, None, None]
    return (start + span * x).numpy()


# ------------------------------------------------------------------ caches

# Manifest entries beyond the arrays' own bookkeeping that readers of a dataset use.
DATASET_METADATA = {
    "dataset": str,
    "description": str,
    "class_names": [str],
    "mirror_symmetric": [bool],
    "seed": int,
    "validation_size": int,
    "sources": [PROVENANCE_SCHEMA],
    "checksum_mismatch_allowed": bool,
    "image_format": str,
    "created": str,
    "build_seconds": (int, float),
}


def cache_key(payload: Any) -> str:
    """A short, stable name for everything a cache folder depends on."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _load_raw(provenance: Provenance, cache_dir: Path, allow_mismatch: bool) -> RawData:
    """Decoded uint8 source arrays, cached so several datasets share one decode."""
    source = provenance.source
    key = cache_key([FORMAT_VERSION, source.dataset, provenance.checksum])
    target = cache_dir / "sources" / f"{source.dataset}-{key}"
    layout = CacheLayout(
        SPLITS,
        "uint8",
        source.reader.image_shape,
        source.reader.num_classes,
        {"source": PROVENANCE_SCHEMA, "decode_seconds": (int, float)},
    )

    def build(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        raw, read_provenance = read_source(source, allow_mismatch)
        if read_provenance.checksum != provenance.checksum:
            raise DynrouteError(f"{source.describe()} changed while it was being read; retry")
        for split in SPLITS:
            for kind in ("images", "labels"):
                np.save(array_path(folder, split, kind), getattr(raw, f"{split}_{kind}"))
        return {
            "source": provenance.as_dict(),
            "decode_seconds": round(time.perf_counter() - started, 2),
        }

    cached_build(target, key, layout, build)
    return RawData(*(array for split in SPLITS for array in load_split(target, split)))


# ------------------------------------------------------------------ building


@dataclass
class _Rows:
    """Which source example becomes which dataset example, before pixels are made."""

    source: np.ndarray  # index into spec.sources
    index: np.ndarray  # index within that source's split
    label: np.ndarray

    def take(self, positions: np.ndarray) -> _Rows:
        return _Rows(self.source[positions], self.index[positions], self.label[positions])


def _select_rows(spec: DatasetSpec, raw: dict[str, RawData], split: str) -> _Rows:
    pieces = []
    for part in spec.parts:
        labels = np.asarray(getattr(raw[part.source], f"{split}_labels"))
        mapping = np.full(max(int(labels.max(initial=0)) + 1, 10), -1, dtype=np.int64)
        if part.others is not None:
            mapping[:] = part.others
        for old, new in part.labels.items():
            mapping[old] = new
        new_labels = mapping[labels]
        keep = np.flatnonzero(new_labels >= 0)
        source_id = spec.sources.index(part.source)
        pieces.append((np.full(keep.size, source_id), keep, new_labels[keep]))
    return _Rows(*(np.concatenate(column) for column in zip(*pieces, strict=True)))


def stratified_positions(
    labels: np.ndarray, size: int, rng: np.random.Generator, keep: int = 0
) -> np.ndarray:
    """About ``size`` positions (sorted), each class in proportion to its count.

    Largest remainders get the leftover places, so the total is exactly ``size`` unless a
    class would then keep fewer than ``keep`` examples outside the choice.
    """
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * size / len(labels)
    take = np.floor(share).astype(np.int64)
    room = take < counts - keep
    leftover = np.argsort(-np.where(room, share - take, -1.0), kind="stable")
    leftover = leftover[: size - take.sum()]
    take[leftover[room[leftover]]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=n, replace=False)
        for cls, n in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def validation_positions(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Stratified, seeded choice of ``size`` training positions (sorted) for validation."""
    if size == 0:
        return np.empty(0, dtype=np.int64)
    if not 0 < size < len(labels):
        raise DynrouteError(
            f"validation size {size} must be between 0 and {len(labels) - 1} "
            f"(the training set has {len(labels)} examples)"
        )
    held = stratified_positions(labels, size, np.random.default_rng([seed, VALIDATION_STREAM]))
    kept = np.ones(len(labels), dtype=bool)
    kept[held] = False
    missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(labels[kept]).tolist()))
    if missing:
        import sys

        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        print(
            f"dynroute: warning: holding out {size} of {len(labels)} training examples leaves "
            f"no training example of class(es) {shown}; hold out fewer",
            file=sys.stderr,
        )
    return held


def new_image_array(folder: Path, split: str, count: int, size: int) -> np.ndarray:
    """A float32 (count, 3, size, size) .npy memmap to fill chunk by chunk."""
    return np.lib.format.open_memmap(
        array_path(folder, split, "images"),
        mode="w+",
        dtype=np.float32,
        shape=(count, 3, size, size),
    )


def _write_split(
    folder: Path,
    name: str,
    rows: _Rows,
    spec: DatasetSpec,
    source_images: list[np.ndarray],
    colours: list[tuple[np.ndarray, np.ndarray] | None],
) -> None:
    """Make the float32 pixels chunk by chunk straight into a .npy memmap."""
    out = new_image_array(folder, name, len(rows.label), IMAGE_SIZE)
    for start in range(0, len(rows.label), CHUNK):
        stop = min(start + CHUNK, len(rows.label))
        chunk = rows.take(np.arange(start, stop))
        for source_id, source in enumerate(spec.sources):
            mask = chunk.source == source_id
            if not mask.any():
                continue
            index = chunk.index[mask]
            pixels = np.asarray(source_images[source_id][index])
            if source == "mnist":
                c0, c1 = colours[source_id]  # type: ignore[misc]
                out[start + np.flatnonzero(mask)] = recolour_digits(pixels, c0[index], c1[index])
            else:
                out[start + np.flatnonzero(mask)] = gamma_decode(pixels)
    out.flush()
    del out
    np.save(array_path(folder, name, "labels"), rows.label.astype(np.int64))


def _build_dataset(
    folder: Path,
    spec: DatasetSpec,
    raw: dict[str, RawData],
    provenances: list[Provenance],
    seed: int,
    validation_size: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    splits: dict[str, _Rows] = {}
    full_train = _select_rows(spec, raw, "train")
    held_out = validation_positions(full_train.label, validation_size, seed)
    train_mask = np.ones(len(full_train.label), dtype=bool)
    train_mask[held_out] = False
    splits["train"] = full_train.take(np.flatnonzero(train_mask))
    if validation_size:
        splits["validation"] = full_train.take(held_out)
    splits["test"] = _select_rows(spec, raw, "test")

    for split, rows in splits.items():
        raw_split = "test" if split == "test" else "train"
        stream = TEST_COLOUR_STREAM if split == "test" else TRAIN_COLOUR_STREAM
        images, colours = [], []
        for source in spec.sources:
            source_images = getattr(raw[source], f"{raw_split}_images")
            images.append(source_images)
            # Colours are drawn for every MNIST image of the split, so a digit looks the
            # same in ``mnist`` and ``hybrid`` and in train and validation.
            rng = np.random.default_rng([seed, stream])
            colours.append(digit_colours(len(source_images), rng) if source == "mnist" else None)
        _write_split(folder, split, rows, spec, images, colours)

    return {
        "dataset": spec.name,
        "description": spec.description,
        "class_names": list(spec.class_names),
        "mirror_symmetric": list(spec.mirror_symmetric),
        "seed": seed,
        "validation_size": validation_size,
        "sources": [provenance.as_dict() for provenance in provenances],
        "checksum_mismatch_allowed": any(p.mismatched for p in provenances),
        "image_format": "float32 NCHW (N, 3, 32, 32), linear intensity in [0, 1]",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(time.perf_counter() - started, 2),
    }


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    validation_size: int = 0,
    seed: int = DEFAULT_SEED,
    allow_checksum_mismatch: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = IMAGE_SIZE,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> DatasetSplits:
    """Load (building and caching on first use) one of ``dataset_names()``, or the user's
    own data as ``folder:PATH`` or ``npz:PATH`` (PATH relative to the working directory;
    ``data_dir`` is not used for those).

    ``seed`` fixes the digit colours and the validation split (and a user tree's test
    split); ``validation_size`` examples are carved from the training set (0, the paper's
    setting, keeps it whole). ``image_size`` (user data only; built-in images are 32x32) is
    the side images are resized to; ``test_fraction`` is the share of a ``folder:`` tree
    without train/ and test/ folders held out, stratified, for testing. Raw files are
    checksummed on every call, so a changed source triggers a rebuild, and the cached arrays
    are verified against the hashes recorded when they were built.
    """
    user = split_dataset_name(name)
    if validation_size < 0:
        raise DynrouteError(f"validation size must be >= 0, got {validation_size}")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise DynrouteError(f"image size must be an integer, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DynrouteError(
            f"image size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size}"
        )
    if not 0 < test_fraction < 1:
        raise DynrouteError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    cache_path = resolve_cache_dir(cache_dir)
    if user is not None:
        kind, path = user
        return source_kind(kind).loader(
            name,
            kind,
            path,
            cache_dir=cache_path,
            validation_size=validation_size,
            seed=seed,
            image_size=image_size,
            test_fraction=test_fraction,
        )
    spec = get_spec(name)
    if image_size != IMAGE_SIZE:
        raise DynrouteError(
            f"{name}'s images are {IMAGE_SIZE}x{IMAGE_SIZE}; an image size applies only to "
            "folder:PATH and npz:PATH datasets"
        )
    if test_fraction != DEFAULT_TEST_FRACTION:
        raise DynrouteError(
            f"{name} has its own test split; a test fraction applies only to a folder:PATH "
            "tree without train/ and test/ folders"
        )
    data_path = resolve_data_dir(data_dir)
    sources: list[Source] = [find_source(source, data_path) for source in spec.sources]
    provenances = [identify_source(source, allow_checksum_mismatch) for source in sources]
    key = cache_key(
        [FORMAT_VERSION, name, seed, validation_size, [p.checksum for p in provenances]]
    )
    target = cache_path / f"{name}-{key}"
    splits = ("train", "validation", "test") if validation_size else SPLITS
    layout = CacheLayout(
        splits, "float32", (3, IMAGE_SIZE, IMAGE_SIZE), len(spec.class_names), DATASET_METADATA
    )

    def build(folder: Path) -> dict[str, Any]:
        logger.info("building dataset %s into %s", name, target)
        raw = {
            p.source.dataset: _load_raw(p, cache_path, allow_checksum_mismatch) for p in provenances
        }
        return _build_dataset(folder, spec, raw, provenances, seed, validation_size)

    manifest = cached_build(target, key, layout, build)
    loaded = {
        split: DatasetSplit(*load_split(target, split), spec.class_names, spec.mirror_symmetric)
        for split in splits
    }
    return DatasetSplits(
        name, loaded["train"], loaded.get("validation"), loaded["test"], manifest, target
    )
