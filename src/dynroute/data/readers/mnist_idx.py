"""MNIST as the four canonical IDX files, plain or gzip-compressed.

Checksums are of the uncompressed content, so recompressed ``.gz`` copies still
count as official.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.readers.common import (
    EXPANSION_FREE_BYTES,
    MAX_EXPANSION_RATIO,
    FileCheck,
    Provenance,
    RawData,
    Source,
    check_checksums,
    check_labels,
    combined_checksum,
    existing_folders,
    expansion_problem,
    md5_bytes,
    read_bytes,
    register_layout,
)

MNIST_DIGITS = 10
MNIST_SIZE = 28
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def gunzip(data: bytes, path: Path) -> bytes:
    """Decompress gzip data, turning every flavour of corruption into one clear error; data
    that expands more than ``MAX_EXPANSION_RATIO`` times (a gzip bomb) is stopped there."""
    allowed = max(EXPANSION_FREE_BYTES, MAX_EXPANSION_RATIO * len(data))
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(allowed + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DynrouteError(
            f"{path} is not a valid gzip file or is truncated ({exc}); re-download it"
        ) from exc
    problem = expansion_problem(len(out), len(data))
    if problem:
        raise DynrouteError(f"{path} expands to more than {problem}: refused (a gzip bomb?)")
    return out


def read_maybe_gzip(path: Path) -> bytes:
    """File content, decompressed when the name ends in .gz (checksums are of this)."""
    data = read_bytes(path)
    return gunzip(data, path) if path.suffix == ".gz" else data


def parse_idx(data: bytes, name: str, expected_magic: int) -> np.ndarray:
    """Decode an IDX file, checking magic, dimensions and length before trusting it."""
    kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
    if len(data) < 8:
        raise DynrouteError(f"{name}: only {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != expected_magic:
        raise DynrouteError(
            f"{name}: IDX magic number is {magic}, expected {expected_magic} for MNIST {kind}; "
            "this is not an MNIST file of that kind"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DynrouteError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if kind == "images" and dims[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise DynrouteError(
            f"{name}: images are {dims[1]}x{dims[2]}, expected {MNIST_SIZE}x{MNIST_SIZE}"
        )
    expected_bytes = int(np.prod(dims))
    if len(data) - header != expected_bytes:
        raise DynrouteError(
            f"{name}: header announces {dims[0]} {kind} ({expected_bytes} data bytes) but the "
            f"file holds {len(data) - header} data bytes; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels":
        check_labels(array, MNIST_DIGITS, name)
    return array


@dataclass(frozen=True, kw_only=True)
class MnistIdxReader:
    """The IDX files named by ``expected_md5`` (name -> MD5 of the uncompressed file).

    The order of ``expected_md5`` is train images, train labels, test images, test labels.
    """

    expected_md5: Mapping[str, str]
    subfolders: tuple[str, ...] = ("mnist", "MNIST/raw", "")

    kind: ClassVar[str] = "idx"
    image_shape: ClassVar[tuple[int, ...]] = (MNIST_SIZE, MNIST_SIZE)
    num_classes: ClassVar[int] = MNIST_DIGITS

    def find(self, data_dir: Path) -> Source | None:
        """The four files, plain or .gz; a partial set is an error, not a miss."""
        for folder in existing_folders(data_dir, self.subfolders):
            found: dict[str, Path] = {}
            for name in self.expected_md5:
                for candidate in (folder / name, folder / f"{name}.gz"):
                    if candidate.is_file():
                        found[name] = candidate
                        break
            if found and len(found) < len(self.expected_md5):
                missing = ", ".join(sorted(set(self.expected_md5) - set(found)))
                raise DynrouteError(
                    f"incomplete MNIST in {folder}: missing {missing} (plain or .gz); "
                    "re-download it with `dynroute data fetch --dataset mnist`"
                )
            if found:
                files = tuple(found[name] for name in self.expected_md5)
                return Source("mnist", folder, self, files)
        return None

    def _contents(
        self, source: Source, allow_checksum_mismatch: bool
    ) -> tuple[list[bytes], Provenance]:
        contents = [read_maybe_gzip(path) for path in source.files]
        checks = [
            FileCheck(path.name, md5_bytes(data), expected)
            for path, data, expected in zip(
                source.files, contents, self.expected_md5.values(), strict=True
            )
        ]
        check_checksums(checks, source.path, allow_checksum_mismatch)
        return contents, Provenance(source, combined_checksum(checks), tuple(checks))

    def identify(self, source: Source, allow_checksum_mismatch: bool) -> Provenance:
        return self._contents(source, allow_checksum_mismatch)[1]

    def read(self, source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
        contents, provenance = self._contents(source, allow_checksum_mismatch)
        names = [path.name for path in source.files]
        magics = (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC) * 2
        arrays = [
            parse_idx(data, name, magic)
            for data, name, magic in zip(contents, names, magics, strict=True)
        ]
        for split, images, labels, image_name, label_name in (
            ("train", arrays[0], arrays[1], names[0], names[1]),
            ("test", arrays[2], arrays[3], names[2], names[3]),
        ):
            if len(images) != len(labels):
                raise DynrouteError(
                    f"MNIST {split}: {image_name} holds {len(images)} images but {label_name} "
                    f"holds {len(labels)} labels; the files do not belong together"
                )
        raw = RawData(arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64))
        return raw, provenance


@register_layout("mnist", 0)
def _idx_files(trusted: dict[str, Any]) -> MnistIdxReader:
    return MnistIdxReader(expected_md5=trusted["mnist"])
