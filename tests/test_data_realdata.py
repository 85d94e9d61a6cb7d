"""The real offline MNIST / CIFAR-10 copies (DYNROUTE_DATA); one cache per session."""

from __future__ import annotations

import numpy as np
import pytest

from dynroute.data import load_dataset

pytestmark = pytest.mark.realdata

HYBRID_TRAIN = [5923, 6742, 5958, 6131, 5842, 5000, 5000, 5000, 5000, 5000]
HYBRID_TEST = [980, 1135, 1032, 1010, 982, 1000, 1000, 1000, 1000, 1000]


@pytest.fixture(scope="session")
def hybrid(real_data_dir, real_cache_dir):
    return load_dataset("hybrid", real_data_dir, cache_dir=real_cache_dir)


def test_hybrid_counts_and_range(hybrid):
    assert hybrid.train.class_counts() == HYBRID_TRAIN
    assert hybrid.test.class_counts() == HYBRID_TEST
    for split in (hybrid.train, hybrid.test):
        assert split.images.dtype == np.float32 and split.images.shape[1:] == (3, 32, 32)
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0


def test_hybrid_digits_are_recoloured(hybrid):
    """pixel = c0 + (c1 - c0) x with x = 0 in the corner, so the corner is c0 and the
    pixel farthest from it is x_max * ||c1 - c0|| >= 0.3 x_max away; digits reach
    x_max near 1 after the bilinear resize, so nearly all distances are close to >= 0.3."""
    digits = np.asarray(hybrid.train.images[hybrid.train.labels < 5][:5000])
    corner = digits[:, :, 0, 0]
    distance = np.linalg.norm(digits - corner[:, :, None, None], axis=1).reshape(len(digits), -1)
    farthest = distance.max(axis=1)
    assert (farthest >= 0.15).all()
    assert (farthest >= 0.27).mean() > 0.95
    # Colours vary between images: not one fixed palette, and not grey.
    assert corner.std(axis=0).min() > 0.2
    assert np.abs(corner[:, 0] - corner[:, 1]).mean() > 0.1


@pytest.mark.parametrize(
    ("name", "train", "test"),
    [
        ("cifar10", [5000] * 10, [1000] * 10),
        ("cifar5", [5000] * 4 + [30000], [1000] * 4 + [6000]),
        ("cifar2", [45000, 5000], [9000, 1000]),
    ],
)
def test_cifar_counts(real_data_dir, real_cache_dir, name, train, test):
    data = load_dataset(name, real_data_dir, cache_dir=real_cache_dir)
    assert data.train.class_counts() == train and data.test.class_counts() == test
    assert data.train.images[:100].min() >= 0.0 and data.train.images[:100].max() <= 1.0


def test_rebuild_with_same_seed_is_identical(hybrid, real_data_dir, real_cache_dir, tmp_path):
    # Reuse the decoded sources; rebuild only the derived arrays in a fresh cache.
    (tmp_path / "sources").symlink_to(real_cache_dir / "sources")
    again = load_dataset("hybrid", real_data_dir, cache_dir=tmp_path)
    assert again.path != hybrid.path
    np.testing.assert_array_equal(again.train.images, hybrid.train.images)
    np.testing.assert_array_equal(again.test.labels, hybrid.test.labels)


@pytest.mark.slow
def test_cifar_zip_read_as_your_own_folder(real_data_dir, real_cache_dir):
    """The offline CIFAR-10 image zip as folder:PATH gives exactly the built-in cifar10."""
    builtin = load_dataset("cifar10", real_data_dir, cache_dir=real_cache_dir)
    source = builtin.manifest["sources"][0]
    if source["kind"] != "image-zip":
        pytest.skip("cifar10 comes from the official pickles here, not from an image zip")
    yours = load_dataset(f"folder:{source['path']}", cache_dir=real_cache_dir)
    assert yours.class_names == builtin.class_names  # sorted folder names = canonical order
    assert yours.train.class_counts() == [5000] * 10 and yours.test.class_counts() == [1000] * 10
    np.testing.assert_array_equal(yours.train.images, builtin.train.images)
    np.testing.assert_array_equal(yours.test.images, builtin.test.images)
