"""Shared fixtures for the data-layer tests: tiny synthetic MNIST/CIFAR copies.

The fakes are a few images per class, written to ``tmp_path``; checksum tables
are patched to the fakes' MD5s where a test needs them to count as "official".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynroute.data import sources

CIFAR_SHAPE = (32, 32, 3)


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n N``), pin each worker to its own share of the cores.

    Every thread count in dynroute (torch's, a sweep's workers, the commands a test
    starts) follows the cores this process may run on, so two workers that each took
    every core would oversubscribe them and run many times slower, not twice as fast.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[int(worker[2:]) % len(cores) :: count] or cores)


_share_the_cores()


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Serialise a uint8 array as an IDX file with the given magic number."""
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _digits(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(count) % 10
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    images[:, 8:20, 10:18] = rng.integers(128, 256, (count, 12, 8))  # a bright "stroke"
    return images, labels.astype(np.uint8)


@pytest.fixture
def make_mnist(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write the four IDX files (20 train, 10 test images) and trust their MD5s."""

    def make(root: Path, *, gz: bool = True, trusted: bool = True, train: int = 20) -> Path:
        folder = root / "mnist"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        train_images, train_labels = _digits(train, rng)
        test_images, test_labels = _digits(10, rng)
        contents = {
            "train-images-idx3-ubyte": idx_bytes(train_images, 2051),
            "train-labels-idx1-ubyte": idx_bytes(train_labels, 2049),
            "t10k-images-idx3-ubyte": idx_bytes(test_images, 2051),
            "t10k-labels-idx1-ubyte": idx_bytes(test_labels, 2049),
        }
        for name, data in contents.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        if trusted:
            table = {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}
            monkeypatch.setattr(sources, "MNIST_MD5", table)
        return folder

    return make


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def cifar_pixels(label: int, index: int) -> np.ndarray:
    """A flat image whose value encodes class and index, so tests can recognise it."""
    return np.full(CIFAR_SHAPE, 10 * label + index, dtype=np.uint8)


@pytest.fixture
def make_cifar() -> Callable[..., Path]:
    """Write a train/<class>/ test/<class>/ PNG tree (2 + 1 per class), or a zip of it."""

    def make(root: Path, *, as_zip: bool = False, train: int = 2, test: int = 1) -> Path:
        files = {
            f"{split}/{name}/{index:04d}.png": png_bytes(cifar_pixels(label, index))
            for split, count in (("train", train), ("test", test))
            for label, name in enumerate(sources.CIFAR_CLASSES)
            for index in range(count)
        }
        if as_zip:
            root.mkdir(parents=True, exist_ok=True)
            path = root / "cifar10-test.zip"
            with zipfile.ZipFile(path, "w") as archive:
                for name, data in files.items():
                    archive.writestr(name, data)
            return path
        folder = root / "cifar10"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder

    return make


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private dataset cache, also exported as DYNROUTE_CACHE for CLI tests."""
    path = tmp_path / "cache"
    monkeypatch.setenv(sources.CACHE_DIR_ENV, str(path))
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every real-data test is also slow (it reads and decodes the real datasets), so the
    fast tier (`-m "not slow"`) takes the same time with or without DYNROUTE_DATA."""
    for item in items:
        if item.get_closest_marker("realdata") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The offline copies named by DYNROUTE_DATA; realdata tests skip without them."""
    value = os.environ.get(sources.DATA_DIR_ENV)
    if not value or not Path(value).is_dir():
        pytest.skip(f"set {sources.DATA_DIR_ENV} to a folder with MNIST and CIFAR-10 copies")
    return Path(value).absolute()


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache per test session, so each real dataset is built only once."""
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture(scope="session")
def hybrid_subset(real_data_dir, real_cache_dir, tmp_path_factory) -> Path:
    """Real hybrid images, but few (a seeded 3,000 train and 1,000 test, digits and CIFAR
    images alike) as an npz (``--dataset npz:PATH``): runs on it evaluate in a second."""
    from dynroute.data import load_dataset

    hybrid = load_dataset("hybrid", real_data_dir, cache_dir=real_cache_dir)
    rng = np.random.default_rng(0)
    rows = {
        name: np.sort(rng.choice(len(split), size, replace=False))
        for name, split, size in (("train", hybrid.train, 3000), ("test", hybrid.test, 1000))
    }
    path = tmp_path_factory.mktemp("hybrid-subset") / "hybrid-subset.npz"
    np.savez(
        path,
        x_train=hybrid.train.images[rows["train"]],
        y_train=hybrid.train.labels[rows["train"]],
        x_test=hybrid.test.images[rows["test"]],
        y_test=hybrid.test.labels[rows["test"]],
        class_names=np.array(hybrid.class_names),
        mirror_symmetric=np.array(hybrid.mirror_symmetric),
    )
    return path


@pytest.fixture
def data_root(tmp_path, make_mnist, make_cifar):
    """A raw-data folder with tiny MNIST IDX files and a CIFAR-10 zip."""
    root = tmp_path / "raw"
    make_mnist(root)
    make_cifar(root, as_zip=True)
    return root
