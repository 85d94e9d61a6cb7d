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


def test_a_folder_cut_from_the_cifar_zip_trains_end_to_end(real_data_dir, tmp_path, capsys):
    """Your own data, the way a user brings it: three classes of the offline CIFAR-10 zip
    unpacked into a class-folder tree (no train/test split, so dynroute makes one), trained
    with the CLI, evaluated, analysed under every routing policy, and calibrated to a budget
    on its validation split."""
    import json
    import zipfile

    import torch

    from dynroute.cli import main

    archive = next(real_data_dir.glob("*cifar*.zip"), None)
    if archive is None:
        pytest.skip("no CIFAR-10 image zip in the data folder")
    tree = tmp_path / "pets"
    with zipfile.ZipFile(archive) as zf:
        for name in ("cat", "dog", "horse"):
            members = sorted(m for m in zf.namelist() if f"train/{name}/" in m and m[-4:] == ".jpg")
            for member in members[:30]:
                (tree / name).mkdir(parents=True, exist_ok=True)
                (tree / name / member.rsplit("/", 1)[1]).write_bytes(zf.read(member))
    (tree / "notes.txt").write_text("not an image")  # skipped, counted
    run = tmp_path / "run"
    threads = ["--threads", str(torch.get_num_threads())]
    train = ["train", "--dataset", f"folder:{tree}", "--test-fraction", "0.2"]
    train += ["--validation-size", "12", "--iterations", "4", "--batch-size", "8"]
    train += ["--k-cpt", "4e-9", "--out", str(run), "--no-progress", *threads]
    assert main(train) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", *threads]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_examples"] == 18  # 6 of each class's 30 held out for testing
    assert main(["policies", str(run), "--split", "validation", *threads]) == 0
    analysis = json.loads((run / "policies-validation.json").read_text())
    assert analysis["num_examples"] == 12 and len(analysis["single_exit"]) == 8
    budget = str(analysis["single_exit"][2]["mean_macs"] / 1e6)  # exit 3's cost
    assert main(["calibrate", str(run), "--policy", "confidence", "--target-macs", budget,
                 *threads]) == 0  # fmt: skip
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["policy"]["name"] == "confidence"
    assert calibration["validation"]["mean_macs"] <= float(budget) * 1e6
