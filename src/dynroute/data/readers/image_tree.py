"""Images in a class-per-folder tree, ``train/<class>/*`` and ``test/<class>/*``, zipped or not.

The classes are a parameter: the tree must hold exactly those folders and labels
follow their order. Today that is CIFAR-10's ten classes (re-encoded copies); the
same reader can take class names discovered from a user's own folders.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import ClassVar, Self

import numpy as np
from PIL import Image, UnidentifiedImageError

from dynroute.data.readers.common import (
    SPLITS,
    FileCheck,
    Provenance,
    RawData,
    Source,
    cannot_read,
    existing_folders,
    md5_bytes,
    md5_file,
)
from dynroute.errors import DynrouteError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Below this many images a process pool costs more than it saves.
PARALLEL_DECODE_MIN_IMAGES = 4000


def _natural_key(name: str) -> tuple[int, int, str]:
    stem = PurePosixPath(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def group_entries(
    entries: Iterable[str], where: Path, classes: tuple[str, ...]
) -> dict[str, dict[str, list[str]]]:
    """Sort ``split/class/file`` paths into split -> class -> files, enforcing the layout."""
    tree: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for entry in entries:
        parts = entry.split("/")
        if len(parts) >= 2 and parts[0] in tree:
            found = tree[parts[0]]
            found.setdefault(parts[1], [])
            if len(parts) == 3 and parts[2].lower().endswith(IMAGE_SUFFIXES):
                found[parts[1]].append(entry)
    for split, found in tree.items():
        unexpected = sorted(set(found) - set(classes))
        if unexpected:
            raise DynrouteError(
                f"{where}: unexpected class folder {split}/{unexpected[0]}; expected exactly "
                f"these {len(classes)} classes: {', '.join(classes)}"
            )
        for name in classes:
            if name not in found:
                raise DynrouteError(f"{where}: missing class folder {split}/{name}")
            if not found[name]:
                raise DynrouteError(
                    f"{where}: class folder {split}/{name} holds no PNG or JPEG images"
                )
            found[name].sort(key=_natural_key)
    return tree


def _decode_chunk(blobs: list[bytes], names: list[str], size: int) -> np.ndarray:
    """Decode size x size images to (N, 3, size, size) uint8; top-level for the process pool."""
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    for index, (blob, name) in enumerate(zip(blobs, names, strict=True)):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                if image.size != (size, size):
                    raise DynrouteError(
                        f"{name}: image is {image.size[0]}x{image.size[1]}, expected {size}x{size}"
                    )
                pixels = image.convert("RGB").tobytes()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DynrouteError(f"{name}: cannot decode image ({exc})") from exc
        out[index] = np.frombuffer(pixels, dtype=np.uint8).reshape(size, size, 3)
    return out.transpose(0, 3, 1, 2).copy()


def decode_images(blobs: list[bytes], names: list[str], size: int) -> np.ndarray:
    """Decode many small images, in parallel on Linux when it pays off."""
    workers = min(os.cpu_count() or 1, 8)
    can_fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    if len(blobs) < PARALLEL_DECODE_MIN_IMAGES or workers < 2 or not can_fork:
        return _decode_chunk(blobs, names, size)
    step = -(-len(blobs) // (workers * 4))
    chunks = [(blobs[i : i + step], names[i : i + step]) for i in range(0, len(blobs), step)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = list(pool.map(partial(_decode_chunk, size=size), *zip(*chunks, strict=True)))
    return np.concatenate(parts)


class _Tree(ABC):
    """Read access to one image tree; ``entries`` lists class folders too, so empty ones show."""

    def __init__(self, root: Path):
        self.root = root

    @abstractmethod
    def entries(self) -> list[str]: ...

    @abstractmethod
    def read(self, entry: str) -> bytes: ...

    @abstractmethod
    def fingerprint(self, entries: list[str]) -> FileCheck:
        """A cheap checksum that changes whenever the images do, to key the cache."""

    def close(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ZipTree(_Tree):
    def __init__(self, root: Path):
        super().__init__(root)
        self.prefix = ""
        try:
            self.handle = root.open("rb")
        except OSError as exc:
            raise cannot_read(root, exc) from exc
        try:
            self.zip = zipfile.ZipFile(self.handle)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            self.handle.close()
            raise DynrouteError(f"{root} is truncated or not a valid zip archive ({exc})") from exc

    def entries(self) -> list[str]:
        names = [name.rstrip("/") for name in self.zip.namelist()]
        roots = {PurePosixPath(name).parts[0] for name in names if name}
        if "train" not in roots and len(roots) == 1:
            # Tolerate a single wrapping folder, e.g. cifar10/train/...
            self.prefix = f"{roots.pop()}/"
            names = [name[len(self.prefix) :] for name in names if name.startswith(self.prefix)]
        return names

    def read(self, entry: str) -> bytes:
        try:
            return self.zip.read(self.prefix + entry)
        except OSError as exc:
            raise cannot_read(self.root, exc) from exc
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DynrouteError(
                f"{self.root}: cannot read {entry} ({exc}); the copy is corrupt"
            ) from exc

    def fingerprint(self, entries: list[str]) -> FileCheck:
        """MD5 of the whole archive."""
        return FileCheck(self.root.name, md5_file(self.root), None)

    def close(self) -> None:
        self.zip.close()
        self.handle.close()


class _FolderTree(_Tree):
    def entries(self) -> list[str]:
        names = []
        try:
            for split in SPLITS:
                if not (self.root / split).is_dir():
                    continue
                for folder in sorted((self.root / split).iterdir()):
                    if folder.is_dir():
                        names.append(f"{split}/{folder.name}")
                        names += [f"{split}/{folder.name}/{path.name}" for path in folder.iterdir()]
        except OSError as exc:
            raise cannot_read(exc.filename or self.root, exc) from exc
        return names

    def read(self, entry: str) -> bytes:
        try:
            return (self.root / entry).read_bytes()
        except OSError as exc:
            raise cannot_read(self.root / entry, exc) from exc

    def fingerprint(self, entries: list[str]) -> FileCheck:
        """MD5 over names, sizes and modification times: cheap, and changes with any edit."""
        listing = []
        for entry in sorted(e for e in entries if e.lower().endswith(IMAGE_SUFFIXES)):
            try:
                stat = (self.root / entry).stat()
            except OSError as exc:
                raise cannot_read(self.root / entry, exc) from exc
            listing.append(f"{entry}:{stat.st_size}:{stat.st_mtime_ns}")
        return FileCheck("listing(name,size,mtime)", md5_bytes("\n".join(listing).encode()), None)


@dataclass(frozen=True, kw_only=True)
class ImageTreeReader(ABC):
    """An image tree whose class folders are exactly ``classes`` (label = position).

    ``name_hint``: when searching a data directory, only copies whose name contains
    it are taken, so an unrelated tree is never mistaken for this dataset.
    """

    dataset: str
    classes: tuple[str, ...]
    name_hint: str = ""
    subfolders: tuple[str, ...] = ("",)
    image_size: int = 32

    kind: ClassVar[str]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abstractmethod
    def find(self, data_dir: Path) -> Source | None: ...

    @abstractmethod
    def _open(self, path: Path) -> _Tree: ...

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        # Only the fingerprint keys the cache; the layout is checked when the tree is read.
        with self._open(source.path) as tree:
            check = tree.fingerprint(tree.entries())
        return Provenance(source, check.md5, (check,))

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        """No official checksums exist for image trees, so the flag changes nothing."""
        arrays: list[np.ndarray] = []
        with self._open(source.path) as tree:
            entries = tree.entries()
            grouped = group_entries(entries, source.path, self.classes)
            check = tree.fingerprint(entries)
            for split in SPLITS:
                names = [entry for name in self.classes for entry in grouped[split][name]]
                labels = np.repeat(
                    np.arange(len(self.classes), dtype=np.int64),
                    [len(grouped[split][name]) for name in self.classes],
                )
                blobs = [tree.read(entry) for entry in names]
                labelled = [f"{source.path}:{name}" for name in names]
                arrays += [decode_images(blobs, labelled, self.image_size), labels]
        return RawData(*arrays), Provenance(source, check.md5, (check,))


@dataclass(frozen=True, kw_only=True)
class ImageZipReader(ImageTreeReader):
    """The tree inside a ``*.zip`` (optionally under one wrapping folder)."""

    kind: ClassVar[str] = "image-zip"

    def find(self, data_dir: Path) -> Source | None:
        for folder in existing_folders(data_dir, self.subfolders):
            for archive in sorted(folder.glob("*.zip")):
                if self.name_hint in archive.name.lower():
                    return Source(self.dataset, archive, self)
        return None

    def _open(self, path: Path) -> _Tree:
        return _ZipTree(path)


@dataclass(frozen=True, kw_only=True)
class ImageFolderReader(ImageTreeReader):
    """The tree as plain folders: a named subfolder, or a child whose name has the hint."""

    kind: ClassVar[str] = "image-folder"

    def find(self, data_dir: Path) -> Source | None:
        for folder in existing_folders(data_dir, self.subfolders):
            if folder != data_dir and _looks_like_image_tree(folder):
                return Source(self.dataset, folder, self)
            for child in sorted(folder.iterdir()):
                named = self.name_hint in child.name.lower()
                if named and child.is_dir() and _looks_like_image_tree(child):
                    return Source(self.dataset, child, self)
        return None

    def _open(self, path: Path) -> _Tree:
        return _FolderTree(path)


def _looks_like_image_tree(path: Path) -> bool:
    return all((path / split).is_dir() for split in SPLITS)
