"""What every raw-data reader shares: folders, checksums, provenance and error texts.

Nothing here knows a particular layout; the readers next to this module do, and
``dynroute.data.sources`` chooses between them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.io.gate import (  # noqa: F401  (re-exported: the readers' names)
    EXPANSION_FREE_BYTES,
    MAX_EXPANSION_RATIO,
    MAX_IMAGE_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    cannot_read,
    check_regular,
    expansion_problem,
    file_digest,
    file_kind,
    open_regular,
    os_reason,
    read_bytes,
    read_exactly,
    utf8_name,
)
from dynroute.nn.registry import MAX_CLASSES

DATA_DIR_ENV = "DYNROUTE_DATA"
CACHE_DIR_ENV = "DYNROUTE_CACHE"
SPLITS = ("train", "test")


# Limits that keep memory and time bounded by the real size of the data, checked before
# anything is allocated, read or expanded; each message names the limit and the number.
# Classes a dataset may have: labels are 0..MAX_CLASSES-1, as many as a model may answer
# (a label of 10^12 is a mistake, and would otherwise cost memory per label value).
def expand_user(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded, absolute (worker processes
    started elsewhere see the same folder); a user without a home folder (``~nouser/x``)
    is one line naming ``what`` gave it, not a traceback."""
    try:
        return Path(path).expanduser().absolute()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        user = str(path).split("/", 1)[0]
        raise DynrouteError(
            f"{what} {str(path)!r} starts with {user!r}, but there is no such user or home "
            "folder to expand it to: give the full path"
        ) from None


def user_cache_dir() -> Path:
    """Per-user cache root, following XDG so it can be moved without code changes."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return expand_user(base, "XDG_CACHE_HOME") / "dynroute"
    return expand_user("~/.cache", "the home folder") / "dynroute"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Raw-data folder: explicit argument, else $DYNROUTE_DATA, else the per-user cache."""
    if data_dir is not None:
        return expand_user(data_dir, "`data_dir`")
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return expand_user(from_env, DATA_DIR_ENV)
    return user_cache_dir()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where built datasets go: explicit argument, else $DYNROUTE_CACHE, else per-user cache."""
    if cache_dir is not None:
        return expand_user(cache_dir, "`cache_dir`")
    from_env = os.environ.get(CACHE_DIR_ENV)
    if from_env:
        return expand_user(from_env, CACHE_DIR_ENV)
    return user_cache_dir() / "datasets"


def existing_folders(data_dir: Path, subfolders: Iterable[str]) -> list[Path]:
    """The candidate folders (relative to ``data_dir``; "" is itself) that exist."""
    return [data_dir / name for name in subfolders if (data_dir / name).is_dir()]


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    """MD5 of a file, streamed so large archives do not need to fit in memory, and read up
    to the size its status gives (``dynroute.io.gate.file_digest``)."""
    return file_digest(path, "md5")


def check_label_count(top: int, where: str) -> None:
    """Refuse a largest label that would mean more than ``MAX_CLASSES`` classes, before
    anything is allocated per class."""
    if top >= MAX_CLASSES:
        raise DynrouteError(
            f"{where}: label {top} is too large; labels are 0..C-1 with at most "
            f"{MAX_CLASSES} classes (the limit, MAX_CLASSES)"
        )


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse labels outside 0..num_classes-1 here, not as an IndexError deep in training."""
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DynrouteError(
            f"{where}: label {bad} is out of range; expected 0-{num_classes - 1} "
            f"({num_classes} classes)"
        )


@dataclass(frozen=True)
class FileCheck:
    """One checksum comparison, kept for the manifest's provenance record."""

    name: str
    md5: str
    expected_md5: str | None

    @property
    def matches(self) -> bool:
        return self.expected_md5 is None or self.md5 == self.expected_md5

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "md5": self.md5, "expected_md5": self.expected_md5}


def mismatch_details(checks: Iterable[FileCheck]) -> str:
    return "; ".join(
        f"{check.name}: MD5 {check.md5}, expected {check.expected_md5}"
        for check in checks
        if not check.matches
    )


def check_checksums(
    checks: Iterable[FileCheck], where: Path, allow_checksum_mismatch: bool
) -> list[FileCheck]:
    """Refuse files that differ from the official ones unless the user opted in."""
    checks = list(checks)
    if not allow_checksum_mismatch and not all(check.matches for check in checks):
        raise DynrouteError(
            f"checksum mismatch in {where}: {mismatch_details(checks)}. The file is corrupt, "
            "truncated or not the official release: re-download it (`dynroute data fetch`), or "
            "pass `allow_checksum_mismatch` to use this copy "
            "deliberately; the mismatch is then recorded in the dataset manifest"
        )
    return checks


def combined_checksum(checks: Iterable[FileCheck]) -> str:
    """One checksum for a multi-file source, to key its cache."""
    return md5_bytes("".join(f"{c.name}:{c.md5};" for c in checks).encode())


class RawData(NamedTuple):
    """Decoded source arrays: uint8 images (N, H, W) or (N, 3, H, W) and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


class Reader(Protocol):
    """One on-disk layout of a dataset: locate it, checksum it, decode it."""

    kind: str  # recorded in manifests: idx, python-tar, python-batches, image-zip, ...
    image_shape: tuple[int, ...]  # of one decoded uint8 image
    num_classes: int

    def find(self, data_dir: Path) -> Source | None:
        """This layout in ``data_dir`` (or a known subfolder), else None."""
        ...

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        """Checksums without decoding, to key the dataset cache."""
        ...

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        """Decoded arrays, checksumming exactly the bytes decoded."""
        ...


#: Every registered layout of each raw dataset: (rank, factory) pairs, lower rank preferred
#: (official files before re-encoded copies). A factory builds its reader from the trusted
#: checksum tables (``dynroute.data.sources.trusted``), read at call time.
LAYOUTS: dict[str, list[tuple[int, Callable[[dict[str, Any]], Reader]]]] = {}


def register_layout(
    dataset: str, rank: int
) -> Callable[[Callable[[dict[str, Any]], Reader]], Callable[[dict[str, Any]], Reader]]:
    """Decorator: ``factory(trusted) -> Reader`` is one layout ``dataset`` is accepted in."""

    def register(factory: Callable[[dict[str, Any]], Reader]) -> Callable[[dict[str, Any]], Reader]:
        LAYOUTS.setdefault(dataset, []).append((rank, factory))
        LAYOUTS[dataset].sort(key=lambda pair: pair[0])
        return factory

    return register


@dataclass(frozen=True)
class Source:
    """A located raw copy of a dataset and the reader that found it."""

    dataset: str
    path: Path
    reader: Reader = field(compare=False, repr=False)
    files: tuple[Path, ...] = ()

    @property
    def kind(self) -> str:
        return self.reader.kind

    def describe(self) -> str:
        return f"{self.kind} at {self.path}"


# Shape of ``Provenance.as_dict()``, so a hand-edited manifest is caught before use.
PROVENANCE_SCHEMA = {
    "dataset": str,
    "kind": str,
    "path": str,
    "checksum": str,
    "files": [{"name": str, "md5": str, "expected_md5": (str, type(None))}],
    "checksum_mismatch": [str],
}


@dataclass(frozen=True)
class Provenance:
    """What was read and how it compared to the official checksums."""

    source: Source
    checksum: str
    checks: tuple[FileCheck, ...]

    @property
    def mismatched(self) -> list[str]:
        return [check.name for check in self.checks if not check.matches]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.source.dataset,
            "kind": self.source.kind,
            "path": str(self.source.path.resolve()),
            "checksum": self.checksum,
            "files": [check.as_dict() for check in self.checks],
            "checksum_mismatch": self.mismatched,
        }
