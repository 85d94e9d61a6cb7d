"""Images in a class-per-folder tree, zipped or not: ``train/<class>/*`` and ``test/<class>/*``,
or one ``<class>/*`` tree that the caller splits.

The classes are a parameter: the tree must hold exactly those folders and labels
follow their order (CIFAR-10's ten classes for re-encoded copies), or, when none
are given, they are discovered from the folder names, sorted (a user's own tree,
``folder:PATH``). Built-in copies must already be ``image_size`` square; a user's
images are resized instead. Hidden folders (``.git``, ``__MACOSX``) are ignored;
other files that are not images are skipped and reported, never decoded. Files that are
not regular files (named pipes, devices, sockets) are skipped by name, never opened; names
that are not valid UTF-8 are refused. Every image file's size is checked before it is read
(``MAX_IMAGE_FILE_BYTES``; sparse files and zip members that expand more than
``MAX_EXPANSION_RATIO`` times are refused), and every image's pixel count before it is
decoded (``MAX_IMAGE_PIXELS``). Images are decoded by the image format's own code
(``dynroute.data.formats.images``), which ``dynroute predict`` and ``dynroute serve`` decode
files and request bodies with too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import sys
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import ClassVar, Self

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.formats.images import SUFFIXES as IMAGE_SUFFIXES
from dynroute.data.formats.images import Checks, decode_rgb
from dynroute.data.readers.common import (
    MAX_IMAGE_FILE_BYTES,
    SPLITS,
    FileCheck,
    Provenance,
    RawData,
    Source,
    cannot_read,
    check_regular,
    existing_folders,
    expansion_problem,
    file_kind,
    md5_bytes,
    md5_file,
    open_regular,
    utf8_name,
)

logger = logging.getLogger(__name__)

# Below this many images (or bytes) a process pool costs more than it saves.
PARALLEL_DECODE_MIN_IMAGES = 4000
PARALLEL_DECODE_MIN_BYTES = 16 << 20
# Compressed bytes held in memory at once while decoding, so large photos do not fill RAM.
DECODE_CHUNK_BYTES = 256 << 20
# Name of an image folder's fingerprint in provenance records (its files' names, sizes, mtimes).
LISTING_FINGERPRINT = "listing(name,size,mtime)"


def _natural_key(name: str) -> tuple[int, int, str]:
    stem = PurePosixPath(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def is_hidden(name: str) -> bool:
    """Dot-files and folders, and the metadata folder macOS adds to zips."""
    return name.startswith(".") or name == "__MACOSX"


@dataclass(frozen=True)
class TreeListing:
    """Image files per split and class (labels follow ``classes``), and the files skipped.

    A plain ``<class>/*`` tree (``split_folders`` False) is listed as a train split and an
    empty test split.
    """

    split_folders: bool
    classes: tuple[str, ...]
    images: dict[str, dict[str, list[str]]]
    skipped: tuple[str, ...]
    irregular: tuple[str, ...] = ()  # not regular files (FIFOs, devices): skipped, never opened

    def files(self, split: str) -> list[str]:
        found = self.images.get(split, {})
        return [entry for name in self.classes for entry in found.get(name, [])]

    def labels(self, split: str) -> np.ndarray:
        found = self.images.get(split, {})
        counts = [len(found.get(name, [])) for name in self.classes]
        return np.repeat(np.arange(len(self.classes), dtype=np.int64), counts)

    def all_images(self) -> list[str]:
        return [entry for split in SPLITS for entry in self.files(split)]


def has_split_folders(entries: Iterable[str]) -> bool:
    """Whether a tree is laid out as train/ and test/ (else its top folders are classes)."""
    return any(entry.split("/", 1)[0] in SPLITS for entry in entries if "/" in entry)


def list_tree(
    entries: Iterable[str], where: Path, classes: tuple[str, ...], split_folders: bool
) -> TreeListing:
    """Sort tree entries (folders end in "/") into split -> class -> images, enforcing the layout.

    Images may lie at any depth under their class folder. ``classes`` empty: discover them
    from the folder names (sorted); at least two, and train/ and test/ must agree.
    """
    splits = SPLITS if split_folders else ("train",)
    depth = 2 if split_folders else 1  # leading path parts naming the split and the class
    found: dict[str, dict[str, list[str]]] = {split: {} for split in splits}
    skipped = []
    for entry in entries:
        is_folder = entry.endswith("/")
        parts = [part for part in entry.split("/") if part]
        if not parts or any(is_hidden(part) for part in parts[:-1]):
            continue  # inside a hidden folder: not the user's data
        split = parts[0] if split_folders else "train"
        name = parts[depth - 1] if len(parts) >= depth else ""
        in_class = split in found and name and (len(parts) > depth or is_folder)
        if in_class and not is_hidden(name):
            images = found[split].setdefault(name, [])
            if (
                not is_folder
                and not is_hidden(parts[-1])
                and parts[-1].lower().endswith(IMAGE_SUFFIXES)
            ):
                images.append("/".join(parts))
                continue
        if not is_folder:
            skipped.append("/".join(parts))
    for split, in_split in found.items():
        prefix = f"{split}/" if split_folders else ""
        if classes:
            unexpected = sorted(set(in_split) - set(classes))
            if unexpected:
                raise DynrouteError(
                    f"{where}: unexpected class folder {prefix}{unexpected[0]}; expected exactly "
                    f"these {len(classes)} classes: {', '.join(classes)}"
                )
            for name in classes:
                if name not in in_split:
                    raise DynrouteError(f"{where}: missing class folder {prefix}{name}")
        elif not in_split:
            raise DynrouteError(f"{where}: no class folders in {prefix or 'it'}")
        for name, images in in_split.items():
            if not images:
                raise DynrouteError(
                    f"{where}: class folder {prefix}{name} holds no images "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            images.sort(key=_natural_key)
    if not classes:
        classes = _discovered_classes(found, where)
    return TreeListing(split_folders, classes, found, tuple(sorted(skipped)))


def _discovered_classes(found: dict[str, dict[str, list[str]]], where: Path) -> tuple[str, ...]:
    names = sorted(found["train"])
    if "test" in found and set(found["test"]) != set(names):
        only_train = sorted(set(names) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(names))
        difference = "; ".join(
            f"only in {split}/: {', '.join(only)}"
            for split, only in (("train", only_train), ("test", only_test))
            if only
        )
        raise DynrouteError(f"{where}: train/ and test/ hold different classes ({difference})")
    if len(names) < 2:
        raise DynrouteError(
            f"{where}: only one class ({names[0]}); a classifier needs at least two class folders"
        )
    return tuple(names)


def _decode_chunk(blobs: list[bytes], names: list[str], size: int, resize: bool) -> np.ndarray:
    """Decode images to (N, 3, size, size) uint8; top-level for the process pool."""
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    for index, (blob, name) in enumerate(zip(blobs, names, strict=True)):
        out[index] = decode_rgb(blob, name, size, Checks(resize=resize))
    return out.transpose(0, 3, 1, 2).copy()


def decode_images(
    blobs: list[bytes], names: list[str], size: int, resize: bool = False
) -> np.ndarray:
    """Decode many images, in parallel on Linux when it pays off."""
    workers = min(os.cpu_count() or 1, 8)
    can_fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    worth_it = (
        len(blobs) >= PARALLEL_DECODE_MIN_IMAGES
        or sum(map(len, blobs)) >= PARALLEL_DECODE_MIN_BYTES
    )
    if not worth_it or len(blobs) < 2 or workers < 2 or not can_fork:
        return _decode_chunk(blobs, names, size, resize)
    step = -(-len(blobs) // (workers * 4))
    chunks = [(blobs[i : i + step], names[i : i + step]) for i in range(0, len(blobs), step)]
    context = multiprocessing.get_context("fork")
    decode = partial(_decode_chunk, size=size, resize=resize)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = list(pool.map(decode, *zip(*chunks, strict=True)))
    return np.concatenate(parts)


class _Tree(ABC):
    """Read access to one image tree; ``entries`` lists folders too (ending in "/"), so empty
    class folders show."""

    def __init__(self, root: Path):
        self.root = root
        self.irregular: list[str] = []  # entries that are not regular files: never opened

    @abstractmethod
    def entries(self) -> list[str]: ...

    @abstractmethod
    def check_images(self, images: list[str]) -> None:
        """Refuse, before anything is read, an image that is too large to read whole."""

    @abstractmethod
    def read(self, entry: str) -> bytes: ...

    @abstractmethod
    def fingerprint(self, images: list[str]) -> FileCheck:
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
        self.handle = open_regular(root)
        try:
            self.zip = zipfile.ZipFile(self.handle)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            self.handle.close()
            raise DynrouteError(f"{root} is truncated or not a valid zip archive ({exc})") from exc

    def entries(self) -> list[str]:
        names = [name for name in self.zip.namelist() if not name.startswith("__MACOSX/")]
        roots = {name.split("/", 1)[0] for name in names if "/" in name and not is_hidden(name)}
        if len(roots) == 1 and not roots & set(SPLITS):
            # Tolerate a single wrapping folder (cifar10/train/..., pets/cat/...) when it
            # holds folders; a lone class folder (cat/1.png) is not a wrapper.
            prefix = f"{roots.pop()}/"
            if any("/" in name[len(prefix) :] for name in names if name.startswith(prefix)):
                self.prefix = prefix
                names = [name[len(prefix) :] for name in names if name.startswith(prefix)]
        return names

    def check_images(self, images: list[str]) -> None:
        for entry in images:
            info = self.zip.getinfo(self.prefix + entry)
            where = f"{self.root}:{entry}"
            if info.file_size > MAX_IMAGE_FILE_BYTES:
                raise DynrouteError(
                    f"{where} expands to {info.file_size} bytes, more than the limit of "
                    f"{MAX_IMAGE_FILE_BYTES} for one image file (MAX_IMAGE_FILE_BYTES); "
                    "refused before expanding it"
                )
            problem = expansion_problem(info.file_size, info.compress_size)
            if problem:
                raise DynrouteError(
                    f"{where} expands to {problem}: refused before expanding it (a zip bomb?)"
                )

    def read(self, entry: str) -> bytes:
        try:
            return self.zip.read(self.prefix + entry)
        except OSError as exc:
            raise cannot_read(self.root, exc) from exc
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DynrouteError(
                f"{self.root}: cannot read {entry} ({exc}); the copy is corrupt"
            ) from exc

    def fingerprint(self, images: list[str]) -> FileCheck:
        """MD5 of the whole archive."""
        return FileCheck(self.root.name, md5_file(self.root), None)

    def close(self) -> None:
        self.zip.close()
        self.handle.close()


class _FolderTree(_Tree):
    def __init__(self, root: Path):
        super().__init__(root)
        self.status: dict[str, os.stat_result] = {}

    def entries(self) -> list[str]:
        """Every folder and file below the root; symlinked folders are followed once.

        Files that are not regular files (FIFOs, devices, sockets; checked with ``stat``,
        never opened) are left out and listed in ``irregular``.
        """
        names: list[str] = []
        seen: set[str] = set()

        def fail(exc: OSError) -> None:
            raise cannot_read(exc.filename or self.root, exc)

        for folder, subfolders, files in os.walk(self.root, onerror=fail, followlinks=True):
            real = os.path.realpath(folder)
            subfolders[:] = [] if real in seen else [d for d in subfolders if not is_hidden(d)]
            if real in seen:
                continue
            seen.add(real)
            relative = Path(folder).relative_to(self.root).as_posix()
            prefix = "" if relative == "." else f"{relative}/"
            names += [f"{prefix}{name}/" for name in subfolders]
            for name in files:
                entry = f"{prefix}{name}"
                try:
                    status = os.stat(os.path.join(folder, name))
                except FileNotFoundError:  # a dangling symlink: not an image
                    names.append(entry)
                    continue
                except OSError as exc:
                    raise cannot_read(Path(folder, name), exc) from exc
                if not stat.S_ISREG(status.st_mode):
                    self.irregular.append(f"{entry} ({file_kind(status.st_mode)})")
                    continue
                self.status[entry] = status
                names.append(entry)
        return names

    def _status(self, entry: str) -> os.stat_result:
        status = self.status.get(entry)
        if status is None:
            try:
                status = self.status[entry] = (self.root / entry).stat()
            except OSError as exc:
                raise cannot_read(self.root / entry, exc) from exc
        return status

    def check_images(self, images: list[str]) -> None:
        for entry in images:
            status = self._status(entry)
            check_regular(self.root / entry, status)
            if status.st_size > MAX_IMAGE_FILE_BYTES:
                raise DynrouteError(
                    f"{self.root / entry} holds {status.st_size} bytes, more than the limit of "
                    f"{MAX_IMAGE_FILE_BYTES} for one image file (MAX_IMAGE_FILE_BYTES); "
                    "refused before reading it"
                )

    def read(self, entry: str) -> bytes:
        path = self.root / entry
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_IMAGE_FILE_BYTES:  # grew since it was listed
                raise DynrouteError(
                    f"{path} holds {size} bytes, more than the limit of {MAX_IMAGE_FILE_BYTES} "
                    "for one image file (MAX_IMAGE_FILE_BYTES)"
                )
            try:
                return handle.read(MAX_IMAGE_FILE_BYTES + 1)
            except OSError as exc:
                raise cannot_read(path, exc) from exc

    def fingerprint(self, images: list[str]) -> FileCheck:
        """MD5 over names, sizes and modification times: cheap, and changes with any edit
        short of rewriting a file with the same size and a restored modification time."""
        listing = []
        for entry in sorted(images):
            status = self._status(entry)
            listing.append(f"{entry}:{status.st_size}:{status.st_mtime_ns}")
        return FileCheck(LISTING_FINGERPRINT, md5_bytes("\n".join(listing).encode()), None)


def _decode_entries(
    tree: _Tree, entries: list[str], where: Path, size: int, resize: bool
) -> np.ndarray:
    """(N, 3, size, size) uint8 of ``entries``, read and decoded a bounded chunk at a time."""
    out = np.empty((len(entries), 3, size, size), dtype=np.uint8)
    start, blobs, held = 0, [], 0
    for index, entry in enumerate(entries):
        blobs.append(tree.read(entry))
        held += len(blobs[-1])
        if held >= DECODE_CHUNK_BYTES or index == len(entries) - 1:
            names = [f"{where}:{name}" for name in entries[start : index + 1]]
            out[start : index + 1] = decode_images(blobs, names, size, resize)
            start, blobs, held = index + 1, [], 0
    return out


@dataclass(frozen=True, kw_only=True)
class ImageTreeReader(ABC):
    """An image tree whose class folders are exactly ``classes`` (label = position).

    ``classes`` empty: discover them from the folder names, sorted. ``name_hint``: when
    searching a data directory, only copies whose name contains it are taken, so an
    unrelated tree is never mistaken for this dataset. ``resize``: scale any image of at
    least 8 pixels a side to ``image_size`` (a user's tree) instead of refusing other sizes.
    ``split_folders``: train/ and test/ (True), one class tree (False), or detect (None).
    """

    dataset: str
    classes: tuple[str, ...] = ()
    name_hint: str = ""
    subfolders: tuple[str, ...] = ("",)
    image_size: int = 32
    resize: bool = False
    split_folders: bool | None = True

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

    def _list(self, tree: _Tree, where: Path) -> TreeListing:
        entries = tree.entries()
        split = has_split_folders(entries) if self.split_folders is None else self.split_folders
        listing = list_tree(entries, where, self.classes, split)
        for name in (*listing.classes, *listing.all_images()):  # class names, manifest, messages
            utf8_name(name, where)
        tree.check_images(listing.all_images())
        if tree.irregular:
            _warn_irregular(where, tree.irregular)
        return replace(listing, irregular=tuple(sorted(tree.irregular)))

    def scan(self, source: Source) -> tuple[TreeListing, Provenance]:
        """The layout (checked) and the fingerprint that keys the cache, without decoding."""
        with self._open(source.path) as tree:
            listing = self._list(tree, source.path)
            check = tree.fingerprint(listing.all_images())
        return listing, Provenance(source, check.md5, (check,))

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        return self.scan(source)[1]

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        """No official checksums exist for image trees, so the flag changes nothing."""
        arrays: list[np.ndarray] = []
        with self._open(source.path) as tree:
            listing = self._list(tree, source.path)
            check = tree.fingerprint(listing.all_images())
            for split in SPLITS:
                images = _decode_entries(
                    tree, listing.files(split), source.path, self.image_size, self.resize
                )
                arrays += [images, listing.labels(split)]
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


_warned_irregular: set[str] = set()


def _warn_irregular(where: Path, irregular: list[str]) -> None:
    """Name the files left out because they are not regular files (once per folder)."""
    if str(where) in _warned_irregular:
        return
    _warned_irregular.add(str(where))
    shown = ", ".join(sorted(irregular)[:5]) + (", ..." if len(irregular) > 5 else "")
    logger.warning(
        "%s: skipped %d file(s) that are not regular files, never opened: %s",
        where,
        len(irregular),
        shown,
    )


def _looks_like_image_tree(path: Path) -> bool:
    return all((path / split).is_dir() for split in SPLITS)
