"""Which raw copies of MNIST and CIFAR-10 are accepted, and the one place a reader is chosen.

Nothing here writes next to the raw files: the data directory may be a read-only
shared copy, so everything derived from it goes to the cache directory (see
``dynroute.data.datasets``). Every problem a user can fix (missing, truncated,
unreadable or foreign files) becomes a ``DynrouteError`` that names the file and
says what to do, instead of a traceback or a silently wrong array.

Each layout registers itself beside its reader (``register_layout`` in the reader's
module, with its rank: official files before re-encoded copies). The official checksum
tables live here rather than in the readers, and readers are built from them on every
call, so the tables are the single thing to change (or, in tests, to patch) when the set
of trusted files changes.
"""

from __future__ import annotations

from pathlib import Path

from dynroute.core.errors import DynrouteError
from dynroute.data.readers import (
    Provenance,
    RawData,
    Reader,
    Source,
)
from dynroute.data.readers.cifar_python import ARCHIVE_NAME as CIFAR_ARCHIVE_NAME
from dynroute.data.readers.cifar_python import BATCHES_DIR as CIFAR_BATCHES_DIR
from dynroute.data.readers.cifar_python import CIFAR_CLASSES
from dynroute.data.readers.common import (
    CACHE_DIR_ENV,
    DATA_DIR_ENV,
    LAYOUTS,
    SPLITS,
    cannot_read,
    check_labels,
    resolve_cache_dir,
    resolve_data_dir,
)

__all__ = [
    "CACHE_DIR_ENV",
    "CIFAR_ARCHIVE_MD5",
    "CIFAR_ARCHIVE_NAME",
    "CIFAR_BATCH_MD5",
    "CIFAR_CLASSES",
    "DATA_DIR_ENV",
    "LOCAL_COPY_HINT",
    "MISSING_DATA_HINT",
    "MNIST_MD5",
    "find_cifar10",
    "find_mnist",
    "find_source",
    "identify_source",
    "locate",
    "read_source",
    "readers",
    "require_data_dir",
    "resolve_cache_dir",
    "resolve_data_dir",
]

# Canonical MD5 of the *uncompressed* IDX files; recompressed .gz copies still match.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
CIFAR_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

LOCAL_COPY_HINT = (
    f"point dynroute at a folder holding the files with `data_dir`=DIR or {DATA_DIR_ENV}=DIR "
    f"(MNIST: the four IDX files, optionally .gz, in DIR or DIR/mnist; CIFAR-10: "
    f"{CIFAR_ARCHIVE_NAME}, {CIFAR_BATCHES_DIR}/, or a train/<class>/ test/<class>/ "
    "image folder or .zip)"
)
MISSING_DATA_HINT = (
    f"{LOCAL_COPY_HINT}, or run `dynroute data fetch` where the internet is reachable"
)


def trusted() -> dict[str, object]:
    """The checksum tables the readers trust, read now (tests patch the tables above)."""
    return {"mnist": MNIST_MD5, "cifar10": CIFAR_BATCH_MD5, "cifar10-archive": CIFAR_ARCHIVE_MD5}


DISPLAY_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def readers(dataset: str) -> tuple[Reader, ...]:
    """The layouts ``dataset`` is accepted in, in order of preference."""
    if dataset not in LAYOUTS:
        raise DynrouteError(f"no raw dataset {dataset!r}; choose one of: {', '.join(LAYOUTS)}")
    tables = trusted()
    return tuple(factory(tables) for _, factory in LAYOUTS[dataset])


def locate(dataset: str, data_dir: Path) -> Source | None:
    """The preferred copy of ``dataset`` in ``data_dir``, or None if there is none."""
    for reader in readers(dataset):
        try:
            source = reader.find(data_dir)
        except OSError as exc:
            raise cannot_read(exc.filename or data_dir, exc) from exc
        if source is not None:
            return source
    return None


def find_mnist(data_dir: Path) -> Source | None:
    return locate("mnist", data_dir)


def find_cifar10(data_dir: Path) -> Source | None:
    return locate("cifar10", data_dir)


def require_data_dir(data_dir: Path) -> None:
    """Fail early with a hint when the raw-data folder is missing or not a folder."""
    try:
        exists, is_dir = data_dir.exists(), data_dir.is_dir()
    except OSError as exc:
        raise cannot_read(data_dir, exc) from exc
    if not exists:
        raise DynrouteError(f"data directory {data_dir} does not exist; {MISSING_DATA_HINT}")
    if not is_dir:
        raise DynrouteError(f"data directory {data_dir} is not a directory; {MISSING_DATA_HINT}")


def find_source(dataset: str, data_dir: Path) -> Source:
    """Locate the raw copy of ``dataset`` ("mnist" or "cifar10") or explain what is missing."""
    require_data_dir(data_dir)
    source = locate(dataset, data_dir)
    if source is None:
        raise DynrouteError(f"no {DISPLAY_NAMES[dataset]} found in {data_dir}; {MISSING_DATA_HINT}")
    return source


def identify_source(source: Source, allow_checksum_mismatch: bool = False) -> Provenance:
    """Checksum a source without decoding it, to key the dataset cache."""
    return source.reader.identify(source, allow_checksum_mismatch)


def read_source(
    source: Source, allow_checksum_mismatch: bool = False
) -> tuple[RawData, Provenance]:
    """Decode a source into uint8 arrays, verifying checksums of exactly the bytes decoded."""
    raw, provenance = source.reader.read(source, allow_checksum_mismatch)
    for split in SPLITS:
        labels = getattr(raw, f"{split}_labels")
        check_labels(labels, source.reader.num_classes, f"{source.path} ({split} labels)")
    return raw, provenance
