"""CIFAR-10's official "python version": the tar.gz archive or its extracted batches folder.

The batches are pickles, and unpickling can run code, so a batch is only ever
unpickled when its MD5 is the official one; unlike other checksum mismatches
this cannot be waived.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.readers.common import (
    FileCheck,
    Provenance,
    RawData,
    Source,
    check_checksums,
    combined_checksum,
    existing_folders,
    expansion_problem,
    md5_bytes,
    md5_file,
    mismatch_details,
    read_bytes,
    register_layout,
)
from dynroute.data.readers.image_tree import ImageFolderReader, ImageZipReader

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
# The release's label order (batches.meta), which every CIFAR-10 copy must follow.
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_SIZE = 32
SUBFOLDERS = ("", "cifar10", "cifar-10")


def refuse_foreign_pickles(checks: list[FileCheck], where: Path) -> None:
    """Stop before unpickling any batch that is not byte-for-byte the official one."""
    if not all(check.matches for check in checks):
        raise DynrouteError(
            f"checksum mismatch in {where}: {mismatch_details(checks)}; refusing to unpickle a "
            "file that is not the official one (pickle can run code; this check cannot be "
            f"waived). Use the official {ARCHIVE_NAME} or an image-folder/zip copy instead"
        )


def decode_batches(
    batches: dict[str, bytes], expected_md5: Mapping[str, str], where: Path
) -> tuple[RawData, list[FileCheck]]:
    """Unpickle the six official batches into (N, 3, 32, 32) uint8 images and int64 labels."""
    checks = [
        FileCheck(name, md5_bytes(data), expected_md5[name]) for name, data in batches.items()
    ]
    refuse_foreign_pickles(checks, where)
    decoded = {}
    for name, data in batches.items():
        batch = pickle.loads(data, encoding="bytes")
        images = np.asarray(batch[b"data"], dtype=np.uint8)
        decoded[name] = (
            images.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE),
            np.asarray(batch[b"labels"], dtype=np.int64),
        )
    train = [decoded[name] for name in TRAIN_BATCHES]
    raw = RawData(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        *decoded[TEST_BATCH],
    )
    return raw, checks


@dataclass(frozen=True, kw_only=True)
class _CifarPythonReader:
    """What both official layouts share: the batch checksums and the decoded shape."""

    batch_md5: Mapping[str, str]
    subfolders: tuple[str, ...] = SUBFOLDERS

    image_shape: ClassVar[tuple[int, ...]] = (3, CIFAR_SIZE, CIFAR_SIZE)
    num_classes: ClassVar[int] = len(CIFAR_CLASSES)


@dataclass(frozen=True, kw_only=True)
class CifarTarReader(_CifarPythonReader):
    """``cifar-10-python.tar.gz`` as downloaded, read without extracting it."""

    archive_md5: str

    kind: ClassVar[str] = "python-tar"

    def find(self, data_dir: Path) -> Source | None:
        for folder in existing_folders(data_dir, self.subfolders):
            if (folder / ARCHIVE_NAME).is_file():
                return Source("cifar10", folder / ARCHIVE_NAME, self)
        return None

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        checks = [FileCheck(source.path.name, md5_file(source.path), self.archive_md5)]
        check_checksums(checks, source.path, allow_checksum_mismatch)
        return Provenance(source, checks[0].md5, tuple(checks))

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        data = read_bytes(source.path)
        checks = check_checksums(
            [FileCheck(source.path.name, md5_bytes(data), self.archive_md5)],
            source.path,
            allow_checksum_mismatch,
        )
        batches: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                for name in self.batch_md5:
                    info = archive.getmember(f"{BATCHES_DIR}/{name}")
                    problem = expansion_problem(info.size, len(data))
                    if problem:
                        raise DynrouteError(
                            f"{source.path}: {info.name} expands to {problem}: refused"
                        )
                    member = archive.extractfile(info)
                    if member is None:
                        raise KeyError(name)
                    batches[name] = member.read()
        except KeyError as exc:
            raise DynrouteError(
                f"{source.path}: no {BATCHES_DIR}/{exc.args[0]} inside; not a CIFAR-10 archive"
            ) from exc
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            # The archive is already in memory: an OSError here is corrupt gzip data.
            raise DynrouteError(
                f"{source.path} is truncated or not a valid tar.gz archive ({exc}); re-download it"
            ) from exc
        raw, _ = decode_batches(batches, self.batch_md5, source.path)
        return raw, Provenance(source, checks[0].md5, tuple(checks))


@dataclass(frozen=True, kw_only=True)
class CifarBatchesReader(_CifarPythonReader):
    """The extracted ``cifar-10-batches-py/`` folder."""

    kind: ClassVar[str] = "python-batches"

    def find(self, data_dir: Path) -> Source | None:
        for folder in existing_folders(data_dir, self.subfolders):
            if (folder / BATCHES_DIR).is_dir():
                return Source("cifar10", folder / BATCHES_DIR, self)
        return None

    def _batch_path(self, source: Source, name: str) -> Path:
        path = source.path / name
        if not path.is_file():
            raise DynrouteError(f"{source.path}: missing {name}; re-download CIFAR-10")
        return path

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        # The flag cannot help here: a foreign batch would never be unpickled.
        checks = [
            FileCheck(name, md5_file(self._batch_path(source, name)), expected)
            for name, expected in self.batch_md5.items()
        ]
        refuse_foreign_pickles(checks, source.path)
        return Provenance(source, combined_checksum(checks), tuple(checks))

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        batches = {name: read_bytes(self._batch_path(source, name)) for name in self.batch_md5}
        raw, checks = decode_batches(batches, self.batch_md5, source.path)
        return raw, Provenance(source, combined_checksum(checks), tuple(checks))


# CIFAR-10's layouts, best first: the official archive, its unpacked batches, then
# re-encoded image copies (a zip, a folder) checked by their class folders.
@register_layout("cifar10", 0)
def _archive(trusted: dict[str, Any]) -> CifarTarReader:
    return CifarTarReader(batch_md5=trusted["cifar10"], archive_md5=trusted["cifar10-archive"])


@register_layout("cifar10", 1)
def _batches(trusted: dict[str, Any]) -> CifarBatchesReader:
    return CifarBatchesReader(batch_md5=trusted["cifar10"])


_IMAGE_TREE = {
    "dataset": "cifar10",
    "classes": CIFAR_CLASSES,
    "name_hint": "cifar",
    "subfolders": SUBFOLDERS,
}


@register_layout("cifar10", 2)
def _image_zip(trusted: dict[str, Any]) -> ImageZipReader:
    return ImageZipReader(**_IMAGE_TREE)


@register_layout("cifar10", 3)
def _image_folder(trusted: dict[str, Any]) -> ImageFolderReader:
    return ImageFolderReader(**_IMAGE_TREE)
