"""The dataset cache is verified before use: edited, malformed or foreign caches are rebuilt."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dynroute.core.errors import DynrouteError
from dynroute.data import DatasetSplit, cache, datasets, load_dataset

CIFAR10_TEST_LABELS = list(range(10))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / cache.MANIFEST_NAME).read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / cache.MANIFEST_NAME).write_text(json.dumps(manifest))


def rewrite(folder: Path, name: str, array: np.ndarray, *, rehash: bool = False) -> None:
    """Replace a cached array; with ``rehash`` the manifest is made to agree with it."""
    np.save(folder / name, array)
    if rehash:
        manifest = manifest_of(folder)
        manifest[cache.HASH_ALGORITHM][name] = cache.hash_file(folder / name)
        write_manifest(folder, manifest)


def reload_with_warning(data_root, cache_dir, caplog, name: str = "cifar10"):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data = load_dataset(name, data_root, cache_dir=cache_dir)
    assert "ignoring broken dataset cache" in caplog.text
    return data


def test_manifest_records_hashes_of_every_array(data_root, cache_dir):
    data = load_dataset("cifar2", data_root, cache_dir=cache_dir)
    for folder in (data.path, *cache_dir.glob("sources/*")):
        hashes = manifest_of(folder)[cache.HASH_ALGORITHM]
        assert sorted(hashes) == sorted(p.name for p in folder.glob("*.npy"))
        assert all(hashes[name] == cache.hash_file(folder / name) for name in hashes)


@pytest.mark.parametrize(
    ("name", "edit"),
    [
        ("test_labels.npy", lambda labels: labels[::-1].copy()),  # permuted, same size
        ("test_labels.npy", lambda labels: np.where(labels == 3, 99, labels)),  # bad label
        ("train_images.npy", lambda images: images * 0.5),  # same-size pixel edit
    ],
)
def test_same_size_edit_is_caught_and_rebuilt(data_root, cache_dir, caplog, name, edit):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    original = np.array(np.load(data.path / name))
    rewrite(data.path, name, edit(original))
    again = reload_with_warning(data_root, cache_dir, caplog)
    assert name in caplog.text and "SHA-256" in caplog.text
    np.testing.assert_array_equal(np.load(again.path / name), original)
    assert again.test.labels.tolist() == CIFAR10_TEST_LABELS


def test_out_of_range_label_caught_even_with_matching_hash(data_root, cache_dir, caplog):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    rewrite(data.path, "test_labels.npy", np.arange(10) * 11, rehash=True)
    again = reload_with_warning(data_root, cache_dir, caplog)
    assert "test_labels.npy: label 99 is out of range" in caplog.text
    assert again.test.labels.tolist() == CIFAR10_TEST_LABELS


def test_edited_sources_cache_is_caught_and_rebuilt(data_root, cache_dir, caplog):
    cifar10 = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    (source,) = cache_dir.glob("sources/cifar10-*")
    labels = np.load(source / "train_labels.npy")
    rewrite(source, "train_labels.npy", np.roll(labels, 2))  # relabels 2 images per class
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cifar2 = load_dataset("cifar2", data_root, cache_dir=cache_dir)
    assert "ignoring broken dataset cache" in caplog.text and str(source) in caplog.text
    assert "train_labels.npy" in caplog.text
    horse = cifar10.train.images[cifar10.train.labels == 7]
    np.testing.assert_array_equal(cifar2.train.images[cifar2.train.labels == 1], horse)


def _drop(key):
    return lambda manifest: manifest.pop(key)


def _set(key, value):
    return lambda manifest: manifest.__setitem__(key, value)


@pytest.mark.parametrize(
    "damage",
    [
        _set("sizes", {}),
        _drop("sizes"),
        _set("sizes", [20, 10]),
        _set("sizes", {"train": 20, "test": 10, "validation": 0}),
        _set("sizes", {"train": "20", "test": 10}),
        _drop(cache.HASH_ALGORITHM),
        _set("class_counts", {"train": [2] * 10}),
        _set("description", 5),
        _drop("sources"),
        lambda manifest: manifest["sources"][0].pop("kind"),
        lambda manifest: manifest.clear(),
    ],
    ids=[
        "empty-sizes",
        "no-sizes",
        "sizes-list",
        "extra-split",
        "size-string",
        "no-hashes",
        "missing-counts",
        "description-int",
        "no-sources",
        "source-without-kind",
        "empty",
    ],
)
def test_malformed_manifest_is_rebuilt(data_root, cache_dir, caplog, damage):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    manifest = manifest_of(data.path)
    damage(manifest)
    write_manifest(data.path, manifest)
    again = reload_with_warning(data_root, cache_dir, caplog)
    assert again.test.labels.tolist() == CIFAR10_TEST_LABELS and len(again.train) == 20
    assert again.manifest["sizes"] == {"train": 20, "test": 10}


def test_manifest_that_is_not_an_object_is_rebuilt(data_root, cache_dir, caplog):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    (data.path / cache.MANIFEST_NAME).write_text("[1, 2]")
    reload_with_warning(data_root, cache_dir, caplog)
    assert "not a JSON object" in caplog.text


@pytest.mark.parametrize(
    ("name", "array", "complaint"),
    [
        ("test_labels.npy", np.arange(10, dtype=np.int32), "int32 (10,), expected int64"),
        ("test_labels.npy", np.arange(9), "int64 (9,), expected int64 (10,)"),
        ("test_images.npy", np.zeros((10, 3, 16, 64), np.float32), "expected float32"),
        ("train_images.npy", np.zeros((20, 3, 32, 32), np.float64), "float64"),
    ],
)
def test_arrays_of_the_wrong_dtype_or_shape_are_rebuilt(
    data_root, cache_dir, caplog, name, array, complaint
):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    rewrite(data.path, name, array, rehash=True)
    again = reload_with_warning(data_root, cache_dir, caplog)
    assert f"{name} is" in caplog.text and complaint in caplog.text
    assert again.test.labels.tolist() == CIFAR10_TEST_LABELS


def test_unrebuildable_broken_cache_names_the_file(data_root, cache_dir, monkeypatch):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    rewrite(data.path, "test_labels.npy", np.zeros(10, dtype=np.int64))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(cache_dir))

    monkeypatch.setattr(cache.tempfile, "mkdtemp", denied)
    with pytest.raises(DynrouteError) as error:
        load_dataset("cifar10", data_root, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and "Permission denied" in message
    assert f"{data.path} is broken: test_labels.npy has changed" in message


def test_unreplaceable_broken_cache_names_the_file(data_root, cache_dir, monkeypatch):
    data = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    rewrite(data.path, "train_labels.npy", np.zeros(20, dtype=np.int64))

    def denied(source, target):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))

    monkeypatch.setattr(cache.os, "replace", denied)
    with pytest.raises(DynrouteError, match="cannot replace the dataset cache") as error:
        load_dataset("cifar10", data_root, cache_dir=cache_dir)
    assert "train_labels.npy has changed" in str(error.value)
    assert "DYNROUTE_CACHE" in str(error.value)
    assert not list(cache_dir.glob(".tmp-*"))


def test_full_disk_during_build(data_root, cache_dir, monkeypatch):
    def full(folder, name, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / name))

    monkeypatch.setattr(datasets, "_write_split", full)
    with pytest.raises(DynrouteError, match="cannot write the dataset cache .*no space left"):
        load_dataset("cifar2", data_root, cache_dir=cache_dir)
    assert not list(cache_dir.glob(".tmp-*")) and not list(cache_dir.glob("cifar2-*"))


@pytest.mark.parametrize("labels", [[0, 1, 3], [0, -1, 2]])
def test_split_refuses_labels_out_of_range(labels):
    images = np.zeros((3, 3, 32, 32), dtype=np.float32)
    bad = labels[1] if labels[1] < 0 else 3
    with pytest.raises(DynrouteError, match=f"label {bad} is out of range; expected 0-2"):
        DatasetSplit(images, np.array(labels), ("a", "b", "c"), (True,) * 3)
