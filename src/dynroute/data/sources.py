"""Find, verify and decode the raw MNIST and CIFAR-10 files.

Nothing here writes next to the raw files: the data directory may be a
read-only shared copy, so everything derived from it goes to the cache
directory (see ``dynroute.data.datasets``). Every problem a user can fix
(missing, truncated or foreign files) becomes a ``DynrouteError`` that names
the file and says what to do, instead of a traceback or a silently wrong array.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import os
import pickle
import struct
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from dynroute.errors import DynrouteError

DATA_DIR_ENV = "DYNROUTE_DATA"
CACHE_DIR_ENV = "DYNROUTE_CACHE"

# Canonical MD5 of the *uncompressed* IDX files; recompressed .gz copies still match.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_DIGITS = 10
MNIST_SIZE = 28
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

CIFAR_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_BATCHES_DIR = "cifar-10-batches-py"
CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")

# Below this many images a process pool costs more than it saves.
PARALLEL_DECODE_MIN_IMAGES = 4000

LOCAL_COPY_HINT = (
    f"point dynroute at a folder holding the files with --data-dir DIR or {DATA_DIR_ENV}=DIR "
    f"(MNIST: the four IDX files, optionally .gz, in DIR or DIR/mnist; CIFAR-10: "
    f"{CIFAR_ARCHIVE_NAME}, {CIFAR_BATCHES_DIR}/, or a train/<class>/ test/<class>/ "
    "image folder or .zip)"
)
MISSING_DATA_HINT = (
    f"{LOCAL_COPY_HINT}, or run `dynroute data fetch` where the internet is reachable"
)


def user_cache_dir() -> Path:
    """Per-user cache root, following XDG so it can be moved without code changes."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "dynroute"


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute, so worker processes started elsewhere see the same folder."""
    return Path(path).expanduser().absolute()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Raw-data folder: explicit argument, else $DYNROUTE_DATA, else the per-user cache."""
    if data_dir is not None:
        return _absolute(data_dir)
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return _absolute(from_env)
    return user_cache_dir()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where built datasets go: explicit argument, else $DYNROUTE_CACHE, else per-user cache."""
    if cache_dir is not None:
        return _absolute(cache_dir)
    from_env = os.environ.get(CACHE_DIR_ENV)
    if from_env:
        return _absolute(from_env)
    return user_cache_dir() / "datasets"


def require_data_dir(data_dir: Path) -> None:
    """Fail early with a hint when the raw-data folder is missing."""
    if not data_dir.is_dir():
        raise DynrouteError(f"data directory {data_dir} does not exist; {MISSING_DATA_HINT}")


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path) -> str:
    """MD5 of a file, streamed so large archives do not need to fit in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DynrouteError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


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


def check_checksums(
    checks: Iterable[FileCheck], where: Path, allow_checksum_mismatch: bool
) -> list[FileCheck]:
    """Refuse files that differ from the official ones unless the user opted in."""
    checks = list(checks)
    bad = [check for check in checks if not check.matches]
    if bad and not allow_checksum_mismatch:
        details = "; ".join(
            f"{check.name}: MD5 {check.md5}, expected {check.expected_md5}" for check in bad
        )
        raise DynrouteError(
            f"checksum mismatch in {where}: {details}. The file is corrupt, truncated or not "
            "the official release: re-download it (`dynroute data fetch`), or pass "
            "--allow-checksum-mismatch (allow_checksum_mismatch=True) to use this copy "
            "deliberately; the mismatch is then recorded in the dataset manifest"
        )
    return checks


class RawData(NamedTuple):
    """Decoded source arrays: uint8 images (N, H, W) or (N, 3, H, W) and int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class Source:
    """A located raw copy of MNIST or CIFAR-10; ``kind`` says which layout it has."""

    dataset: str  # "mnist" or "cifar10"
    kind: str  # idx, python-tar, python-batches, image-zip, image-folder
    path: Path
    files: tuple[Path, ...] = field(default=())

    def describe(self) -> str:
        return f"{self.kind} at {self.path}"


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


def _combined_checksum(checks: Iterable[FileCheck]) -> str:
    return md5_bytes("".join(f"{c.name}:{c.md5};" for c in checks).encode())


# --------------------------------------------------------------------------- MNIST


def _mnist_candidates(data_dir: Path) -> list[Path]:
    return [data_dir / "mnist", data_dir / "MNIST" / "raw", data_dir]


def find_mnist(data_dir: Path) -> Source | None:
    """Locate the four IDX files (plain or .gz); a partial set is an error, not a miss."""
    for folder in _mnist_candidates(data_dir):
        found: dict[str, Path] = {}
        for name in MNIST_MD5:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if found and len(found) < len(MNIST_MD5):
            missing = ", ".join(sorted(set(MNIST_MD5) - set(found)))
            raise DynrouteError(
                f"incomplete MNIST in {folder}: missing {missing} (plain or .gz); "
                "re-download it with `dynroute data fetch --dataset mnist`"
            )
        if found:
            return Source("mnist", "idx", folder, tuple(found[name] for name in MNIST_MD5))
    return None


def gunzip(data: bytes, path: Path) -> bytes:
    """Decompress gzip data, turning every flavour of corruption into one clear error."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DynrouteError(
            f"{path} is not a valid gzip file or is truncated ({exc}); re-download it"
        ) from exc


def read_maybe_gzip(path: Path) -> bytes:
    """File content, decompressed when the name ends in .gz (checksums are of this)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DynrouteError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return gunzip(data, path) if path.suffix == ".gz" else data


def _mnist_contents(
    source: Source, allow_checksum_mismatch: bool
) -> tuple[list[bytes], Provenance]:
    contents = [read_maybe_gzip(path) for path in source.files]
    checks = [
        FileCheck(path.name, md5_bytes(data), MNIST_MD5[name])
        for path, data, name in zip(source.files, contents, MNIST_MD5, strict=True)
    ]
    check_checksums(checks, source.path, allow_checksum_mismatch)
    return contents, Provenance(source, _combined_checksum(checks), tuple(checks))


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
    if kind == "labels" and array.size and int(array.max()) >= MNIST_DIGITS:
        raise DynrouteError(f"{name}: label {int(array.max())} is not a digit 0-9")
    return array


def _read_mnist(source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
    contents, provenance = _mnist_contents(source, allow_checksum_mismatch)
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
                f"MNIST {split}: {image_name} holds {len(images)} images but {label_name} holds "
                f"{len(labels)} labels; the files do not belong together"
            )
    raw = RawData(arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64))
    return raw, provenance


# ------------------------------------------------------------------------ CIFAR-10


def _cifar_candidates(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "cifar10", data_dir / "cifar-10"]


def _looks_like_image_folder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def find_cifar10(data_dir: Path) -> Source | None:
    """Locate CIFAR-10; the official tar or batches win over re-encoded image copies."""
    folders = [folder for folder in _cifar_candidates(data_dir) if folder.is_dir()]
    for folder in folders:
        if (folder / CIFAR_ARCHIVE_NAME).is_file():
            return Source("cifar10", "python-tar", folder / CIFAR_ARCHIVE_NAME)
    for folder in folders:
        if (folder / CIFAR_BATCHES_DIR).is_dir():
            return Source("cifar10", "python-batches", folder / CIFAR_BATCHES_DIR)
    for folder in folders:
        for archive in sorted(folder.glob("*.zip")):
            if "cifar" in archive.name.lower():
                return Source("cifar10", "image-zip", archive)
    for folder in folders:
        if folder != data_dir and _looks_like_image_folder(folder):
            return Source("cifar10", "image-folder", folder)
        for child in sorted(folder.iterdir()):
            if "cifar" in child.name.lower() and child.is_dir() and _looks_like_image_folder(child):
                return Source("cifar10", "image-folder", child)
    return None


def _unpickle_batch(data: bytes, name: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle an official batch; only ever called on bytes whose MD5 matched."""
    expected = CIFAR_BATCH_MD5[name]
    actual = md5_bytes(data)
    if actual != expected:
        # Pickle can run arbitrary code, so this check is not waivable.
        raise DynrouteError(
            f"{where}: {name} has MD5 {actual}, expected {expected}; refusing to unpickle a "
            "file that is not the official one (pickle can run code). Use the official "
            f"{CIFAR_ARCHIVE_NAME} or an image-folder/zip copy instead"
        )
    batch = pickle.loads(data, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    return images, labels


def _batches_to_raw(batches: dict[str, bytes], where: Path) -> RawData:
    decoded = {name: _unpickle_batch(data, name, where) for name, data in batches.items()}
    train = [decoded[name] for name in CIFAR_TRAIN_BATCHES]
    return RawData(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        *decoded["test_batch"],
    )


def _read_cifar_tar(source: Source, allow_checksum_mismatch: bool) -> tuple[RawData, Provenance]:
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        raise DynrouteError(f"cannot read {source.path}: {exc.strerror or exc}") from exc
    checks = check_checksums(
        [FileCheck(source.path.name, md5_bytes(data), CIFAR_ARCHIVE_MD5)],
        source.path,
        allow_checksum_mismatch,
    )
    batches: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for name in CIFAR_BATCH_MD5:
                member = archive.extractfile(f"{CIFAR_BATCHES_DIR}/{name}")
                if member is None:
                    raise KeyError(name)
                batches[name] = member.read()
    except KeyError as exc:
        raise DynrouteError(
            f"{source.path}: no {CIFAR_BATCHES_DIR}/{exc.args[0]} inside; not a CIFAR-10 archive"
        ) from exc
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DynrouteError(
            f"{source.path} is truncated or not a valid tar.gz archive ({exc}); re-download it"
        ) from exc
    return _batches_to_raw(batches, source.path), Provenance(source, checks[0].md5, tuple(checks))


def _read_cifar_batches(
    source: Source, allow_checksum_mismatch: bool
) -> tuple[RawData, Provenance]:
    batches: dict[str, bytes] = {}
    for name in CIFAR_BATCH_MD5:
        path = source.path / name
        if not path.is_file():
            raise DynrouteError(f"{source.path}: missing {name}; re-download CIFAR-10")
        batches[name] = path.read_bytes()
    checks = [
        FileCheck(name, md5_bytes(data), CIFAR_BATCH_MD5[name]) for name, data in batches.items()
    ]
    # Mismatched batches are refused in _unpickle_batch even when the flag is given.
    check_checksums(checks, source.path, allow_checksum_mismatch)
    raw = _batches_to_raw(batches, source.path)
    return raw, Provenance(source, _combined_checksum(checks), tuple(checks))


def _natural_key(name: str) -> tuple[int, int, str]:
    stem = PurePosixPath(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _group_image_entries(entries: Iterable[str], where: Path) -> dict[str, dict[str, list[str]]]:
    """Sort ``split/class/file`` paths into split -> class -> files, enforcing the layout."""
    tree: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for entry in entries:
        parts = entry.split("/")
        if len(parts) >= 2 and parts[0] in tree:
            classes = tree[parts[0]]
            classes.setdefault(parts[1], [])
            if len(parts) == 3 and parts[2].lower().endswith(IMAGE_SUFFIXES):
                classes[parts[1]].append(entry)
    for split, classes in tree.items():
        unexpected = sorted(set(classes) - set(CIFAR_CLASSES))
        if unexpected:
            raise DynrouteError(
                f"{where}: unexpected class folder {split}/{unexpected[0]}; expected exactly the "
                f"ten CIFAR-10 classes: {', '.join(CIFAR_CLASSES)}"
            )
        for name in CIFAR_CLASSES:
            if name not in classes:
                raise DynrouteError(f"{where}: missing class folder {split}/{name}")
            if not classes[name]:
                raise DynrouteError(
                    f"{where}: class folder {split}/{name} holds no PNG or JPEG images"
                )
            classes[name].sort(key=_natural_key)
    return tree


def _decode_images(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decode 32x32 images to (N, 3, 32, 32) uint8; top-level so a process pool can call it."""
    out = np.empty((len(blobs), CIFAR_SIZE, CIFAR_SIZE, 3), dtype=np.uint8)
    for index, (blob, name) in enumerate(zip(blobs, names, strict=True)):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                if image.size != (CIFAR_SIZE, CIFAR_SIZE):
                    raise DynrouteError(
                        f"{name}: image is {image.size[0]}x{image.size[1]}, expected "
                        f"{CIFAR_SIZE}x{CIFAR_SIZE}"
                    )
                pixels = image.convert("RGB").tobytes()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DynrouteError(f"{name}: cannot decode image ({exc})") from exc
        out[index] = np.frombuffer(pixels, dtype=np.uint8).reshape(CIFAR_SIZE, CIFAR_SIZE, 3)
    return out.transpose(0, 3, 1, 2).copy()


def decode_images(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decode many small images, in parallel on Linux when it pays off."""
    workers = min(os.cpu_count() or 1, 8)
    can_fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    if len(blobs) < PARALLEL_DECODE_MIN_IMAGES or workers < 2 or not can_fork:
        return _decode_images(blobs, names)
    step = -(-len(blobs) // (workers * 4))
    chunks = [(blobs[i : i + step], names[i : i + step]) for i in range(0, len(blobs), step)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        parts = list(pool.map(_decode_images, *zip(*chunks, strict=True)))
    return np.concatenate(parts)


class _ImageStore:
    """Uniform read access to an image tree inside a zip archive or a folder."""

    def __init__(self, source: Source):
        self.source = source
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if source.kind == "image-zip":
            try:
                self.zip = zipfile.ZipFile(source.path)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise DynrouteError(
                    f"{source.path} is truncated or not a valid zip archive ({exc})"
                ) from exc

    def entries(self) -> list[str]:
        """Relative names of class folders and files; folders too, so empty ones are seen."""
        if self.zip is not None:
            names = [name.rstrip("/") for name in self.zip.namelist()]
            roots = {PurePosixPath(name).parts[0] for name in names if name}
            if "train" not in roots and len(roots) == 1:
                # Tolerate a single wrapping folder, e.g. cifar10/train/...
                self.prefix = f"{roots.pop()}/"
                names = [name[len(self.prefix) :] for name in names if name.startswith(self.prefix)]
            return names
        root = self.source.path
        names = []
        for split in SPLITS:
            for folder in sorted((root / split).iterdir()) if (root / split).is_dir() else []:
                if folder.is_dir():
                    names.append(f"{split}/{folder.name}")
                    names += [f"{split}/{folder.name}/{path.name}" for path in folder.iterdir()]
        return names

    def read(self, entry: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + entry)
            return (self.source.path / entry).read_bytes()
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise DynrouteError(
                f"{self.source.path}: cannot read {entry} ({exc}); the copy is corrupt"
            ) from exc

    def fingerprint(self, entries: list[str]) -> FileCheck:
        """Zip: MD5 of the archive. Folder: MD5 over names, sizes and mtimes (cheap)."""
        if self.zip is not None:
            return FileCheck(self.source.path.name, md5_file(self.source.path), None)
        listing = []
        for entry in sorted(e for e in entries if e.lower().endswith(IMAGE_SUFFIXES)):
            stat = (self.source.path / entry).stat()
            listing.append(f"{entry}:{stat.st_size}:{stat.st_mtime_ns}")
        return FileCheck("listing(name,size,mtime)", md5_bytes("\n".join(listing).encode()), None)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _image_tree_provenance(
    store: _ImageStore,
) -> tuple[dict[str, dict[str, list[str]]], Provenance]:
    entries = store.entries()
    tree = _group_image_entries(entries, store.source.path)
    check = store.fingerprint(entries)
    return tree, Provenance(store.source, check.md5, (check,))


def _read_image_tree(source: Source) -> tuple[RawData, Provenance]:
    store = _ImageStore(source)
    try:
        tree, provenance = _image_tree_provenance(store)
        arrays: list[np.ndarray] = []
        for split in SPLITS:
            names = [entry for name in CIFAR_CLASSES for entry in tree[split][name]]
            labels = np.repeat(
                np.arange(len(CIFAR_CLASSES), dtype=np.int64),
                [len(tree[split][name]) for name in CIFAR_CLASSES],
            )
            blobs = [store.read(entry) for entry in names]
            arrays += [decode_images(blobs, [f"{source.path}:{n}" for n in names]), labels]
    finally:
        store.close()
    return RawData(*arrays), provenance


# ------------------------------------------------------------------------ public


def find_source(dataset: str, data_dir: Path) -> Source:
    """Locate the raw copy of ``dataset`` ("mnist" or "cifar10") or explain what is missing."""
    require_data_dir(data_dir)
    source = find_mnist(data_dir) if dataset == "mnist" else find_cifar10(data_dir)
    if source is None:
        label = "MNIST" if dataset == "mnist" else "CIFAR-10"
        raise DynrouteError(f"no {label} found in {data_dir}; {MISSING_DATA_HINT}")
    return source


def identify_source(source: Source, allow_checksum_mismatch: bool = False) -> Provenance:
    """Checksum a source without decoding it, to key the dataset cache."""
    if source.kind == "idx":
        return _mnist_contents(source, allow_checksum_mismatch)[1]
    if source.kind == "python-tar":
        checks = [FileCheck(source.path.name, md5_file(source.path), CIFAR_ARCHIVE_MD5)]
        check_checksums(checks, source.path, allow_checksum_mismatch)
        return Provenance(source, checks[0].md5, tuple(checks))
    if source.kind == "python-batches":
        checks = []
        for name, expected in CIFAR_BATCH_MD5.items():
            path = source.path / name
            if not path.is_file():
                raise DynrouteError(f"{source.path}: missing {name}; re-download CIFAR-10")
            checks.append(FileCheck(name, md5_file(path), expected))
        check_checksums(checks, source.path, allow_checksum_mismatch)
        return Provenance(source, _combined_checksum(checks), tuple(checks))
    store = _ImageStore(source)
    try:
        # Only the fingerprint keys the cache; the layout is checked when the tree is decoded.
        check = store.fingerprint(store.entries())
        return Provenance(source, check.md5, (check,))
    finally:
        store.close()


def read_source(
    source: Source, allow_checksum_mismatch: bool = False
) -> tuple[RawData, Provenance]:
    """Decode a source into uint8 arrays, verifying checksums of exactly the bytes decoded."""
    if source.kind == "idx":
        return _read_mnist(source, allow_checksum_mismatch)
    if source.kind == "python-tar":
        return _read_cifar_tar(source, allow_checksum_mismatch)
    if source.kind == "python-batches":
        return _read_cifar_batches(source, allow_checksum_mismatch)
    return _read_image_tree(source)
