"""Derived datasets, their cache, and the validation split, on synthetic sources."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from dynroute.core.errors import DynrouteError
from dynroute.data import datasets, load_dataset
from dynroute.data.datasets import GAMMA, dataset_names, digit_colours, validation_positions


def test_names_and_unknown_dataset(data_root, cache_dir):
    assert dataset_names() == ["mnist", "cifar10", "cifar5", "cifar2", "hybrid"]
    with pytest.raises(
        DynrouteError, match="unknown dataset 'svhn'; choose one of: mnist, cifar10, "
    ):
        load_dataset("svhn", data_root, cache_dir=cache_dir)


def test_hybrid_layout(data_root, cache_dir):
    data = load_dataset("hybrid", data_root, cache_dir=cache_dir)
    assert data.class_names == (
        "0",
        "1",
        "2",
        "3",
        "4",
        "airplane",
        "automobile",
        "deer",
        "frog",
        "horse",
    )
    assert data.mirror_symmetric == (False,) * 5 + (True,) * 5
    # 20 fake train digits (2 per digit) -> 10 kept; 2 CIFAR images per kept class.
    assert data.train.class_counts() == [2] * 10 and data.test.class_counts() == [1] * 10
    assert data.validation is None
    for split in (data.train, data.test):
        assert split.images.shape == (len(split), 3, 32, 32) and split.images.dtype == np.float32
        assert isinstance(split.images, np.memmap) and split.labels.dtype == np.int64
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
    # CIFAR part is gamma-decoded: the fake airplane image 1 has value 1 everywhere.
    airplane = data.train.images[data.train.labels == 5][1]
    np.testing.assert_allclose(airplane, (1 / 255) ** GAMMA, rtol=1e-6)
    assert data.manifest["seed"] == 0 and data.manifest["class_counts"]["train"] == [2] * 10


def test_cifar_relabelling(data_root, cache_dir):
    cifar5 = load_dataset("cifar5", data_root, cache_dir=cache_dir)
    assert cifar5.class_names == ("cat", "deer", "dog", "horse", "other")
    assert cifar5.train.class_counts() == [2, 2, 2, 2, 12]
    cifar2 = load_dataset("cifar2", data_root, cache_dir=cache_dir)
    assert cifar2.class_names == ("other", "horse") and cifar2.test.class_counts() == [9, 1]
    cifar10 = load_dataset("cifar10", data_root, cache_dir=cache_dir)
    np.testing.assert_array_equal(cifar10.train.images, cifar2.train.images)


def test_recolouring(data_root, cache_dir):
    data = load_dataset("mnist", data_root, cache_dir=cache_dir)
    assert data.train.class_counts() == [2] * 10 and data.mirror_symmetric == (False,) * 10
    images = np.asarray(data.train.images)
    # The background (x=0) is c0 and the stroke interior (x=1-ish) lies towards c1.
    background = images[:, :, 0, 0]
    assert np.allclose(images[:, :, :2, :].reshape(len(images), 3, -1), background[:, :, None])
    centre = images[:, :, 16, 16]
    assert (np.linalg.norm(centre - background, axis=1) > 0.1).all()
    again = load_dataset("mnist", data_root, seed=0, cache_dir=cache_dir.parent / "other")
    np.testing.assert_array_equal(again.train.images, images)
    other_seed = load_dataset("mnist", data_root, seed=1, cache_dir=cache_dir)
    assert not np.allclose(other_seed.train.images, images)


def test_hybrid_digits_match_mnist_dataset(data_root, cache_dir):
    mnist = load_dataset("mnist", data_root, cache_dir=cache_dir)
    hybrid = load_dataset("hybrid", data_root, cache_dir=cache_dir)
    digits = np.flatnonzero(mnist.train.labels < 5)
    np.testing.assert_array_equal(hybrid.train.images[:10], mnist.train.images[digits])


def test_digit_colours_are_far_apart():
    c0, c1 = digit_colours(5000, np.random.default_rng(0))
    assert (np.linalg.norm(c1 - c0, axis=1) >= 0.3).all()
    assert c0.min() >= 0 and c1.max() <= 1


def test_validation_split(data_root, cache_dir):
    data = load_dataset("hybrid", data_root, validation_size=5, seed=3, cache_dir=cache_dir)
    assert len(data.train) == 15 and len(data.validation) == 5 and len(data.test) == 10
    assert data.manifest["validation_size"] == 5
    again = load_dataset("hybrid", data_root, validation_size=5, seed=3, cache_dir=cache_dir)
    np.testing.assert_array_equal(again.validation.images, data.validation.images)
    with pytest.raises(DynrouteError, match="validation size 20 must be between 0 and 19"):
        load_dataset("hybrid", data_root, validation_size=20, cache_dir=cache_dir)


def test_validation_positions_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [100, 100, 50, 50])
    chosen = validation_positions(labels, 30, seed=0)
    assert len(np.unique(chosen)) == 30
    assert np.bincount(labels[chosen]).tolist() == [10, 10, 5, 5]
    np.testing.assert_array_equal(chosen, validation_positions(labels, 30, seed=0))
    assert not np.array_equal(chosen, validation_positions(labels, 30, seed=1))


def test_cache_is_reused(data_root, cache_dir, monkeypatch):
    first = load_dataset("cifar2", data_root, cache_dir=cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(datasets, "_build_dataset", fail)
    assert load_dataset("cifar2", data_root, cache_dir=cache_dir).path == first.path


def test_changed_source_rebuilds(tmp_path, make_mnist, make_cifar, cache_dir):
    root = tmp_path / "raw"
    make_mnist(root)
    folder = make_cifar(root)
    before = load_dataset("cifar10", root, cache_dir=cache_dir)
    image = folder / "train" / "cat" / "0000.png"
    image.write_bytes((folder / "train" / "dog" / "0000.png").read_bytes())
    os.utime(image, ns=(1, 1))
    after = load_dataset("cifar10", root, cache_dir=cache_dir)
    assert after.path != before.path
    cat = after.train.images[after.train.labels == 3][0]
    np.testing.assert_allclose(cat, (50 / 255) ** GAMMA, rtol=1e-6)  # now the dog's pixels


def test_interrupted_build_leaves_nothing_usable(data_root, cache_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "_write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar2", data_root, cache_dir=cache_dir)
    assert not list(cache_dir.glob("cifar2-*")) and not list(cache_dir.glob(".tmp-*"))
    monkeypatch.undo()


def test_half_written_cache_is_rebuilt(data_root, cache_dir, caplog):
    built = load_dataset("cifar2", data_root, cache_dir=cache_dir)
    (built.path / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING):
        again = load_dataset("cifar2", data_root, cache_dir=cache_dir)
    assert "ignoring broken dataset cache" in caplog.text and "no manifest" in caplog.text
    assert (again.path / "manifest.json").is_file() and len(again.train) == 20


def test_checksum_mismatch_recorded_in_manifest(tmp_path, make_mnist, cache_dir):
    root = tmp_path / "raw"
    make_mnist(root, trusted=False)
    with pytest.raises(DynrouteError, match="checksum mismatch"):
        load_dataset("mnist", root, cache_dir=cache_dir)
    data = load_dataset("mnist", root, allow_checksum_mismatch=True, cache_dir=cache_dir)
    assert data.manifest["checksum_mismatch_allowed"] is True
    assert len(data.manifest["sources"][0]["checksum_mismatch"]) == 4


def test_read_only_data_dir_untouched(data_root, cache_dir):
    before = sorted(p.name for p in data_root.rglob("*"))
    os.chmod(data_root, 0o555)
    try:
        load_dataset("hybrid", data_root, cache_dir=cache_dir)
    finally:
        os.chmod(data_root, 0o755)
    assert sorted(p.name for p in data_root.rglob("*")) == before


def test_env_variables_choose_folders(data_root, cache_dir, monkeypatch):
    monkeypatch.setenv("DYNROUTE_DATA", str(data_root))
    data = load_dataset("cifar2")
    assert data.path.parent == cache_dir
