"""Datasets from the user's own files (folder:PATH, npz:PATH), on tiny generated images."""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from dynroute import cli
from dynroute.core.errors import DynrouteError
from dynroute.data import absolute_dataset_name, is_dataset_name, load_dataset, user_data
from dynroute.data.datasets import GAMMA

SIDE = 12  # generated images are 12x12 unless a test says otherwise


def image_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def flat(value: int, side: int = SIDE) -> np.ndarray:
    """A one-colour image, which stays exactly that colour when resized."""
    return np.full((side, side, 3), value, dtype=np.uint8)


def linear(value: float) -> float:
    return (value / 255) ** GAMMA


def write_tree(root: Path, counts: dict[str, int], split: str = "") -> Path:
    """``root/[split/]<class>/<i>.png`` with flat images of value 100 * class + i."""
    for label, (name, count) in enumerate(counts.items()):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (folder / f"{index}.png").write_bytes(image_bytes(flat(100 * label + index)))
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def values(split) -> list[float]:
    """The colour of each (flat) image of a split, in linear intensity."""
    return [round(float(image[0, 0, 0]), 6) for image in np.asarray(split.images)]


def arrays(count: int = 6, test: int = 4, shape=(SIDE, SIDE, 3), dtype=np.uint8, classes=2):
    """x/y arrays for an npz: labels cycle through the classes, pixels are random."""
    rng = np.random.default_rng(0)
    high = 256 if dtype == np.uint8 else 1

    def images(n: int) -> np.ndarray:
        data = rng.random((n, *shape)) * high
        return data.astype(dtype)

    return {
        "x_train": images(count),
        "y_train": np.arange(count) % classes,
        "x_test": images(test),
        "y_test": np.arange(test) % classes,
    }


# ------------------------------------------------------------------ names


def test_names_are_checked_without_loading(tmp_path, cache_dir, monkeypatch):
    for name in ("hybrid", "folder:pets", "npz:/data/x.npz", "folder:~/a b"):
        assert is_dataset_name(name), name
    for name in ("folder:", "npz:  ", "foo:bar", "svhn", ""):
        assert not is_dataset_name(name), name
    with pytest.raises(DynrouteError, match="unknown dataset prefix 'foo:' in 'foo:bar'"):
        load_dataset("foo:bar", cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="'folder:' names no path"):
        load_dataset("folder:", cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="unknown dataset 'svhn'.*folder:PATH / npz:PATH"):
        load_dataset("svhn", cache_dir=cache_dir)
    monkeypatch.chdir(tmp_path)
    assert absolute_dataset_name("folder:pets") == f"folder:{tmp_path / 'pets'}"
    assert absolute_dataset_name("cifar2") == "cifar2"


# ------------------------------------------------------------------ folders


def test_folder_with_train_and_test(tmp_path, cache_dir):
    root = write_tree(tmp_path / "pets", {"zebra": 3, "ant": 2}, "train")
    write_tree(root, {"zebra": 1, "ant": 1}, "test")
    data = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    # Classes are the folder names, sorted: ant (written as label 1, values 100+) comes first.
    assert data.class_names == ("ant", "zebra") and data.mirror_symmetric == (True, True)
    assert data.train.class_counts() == [2, 3] and data.test.class_counts() == [1, 1]
    assert data.train.images.shape == (5, 3, 32, 32) and data.train.images.dtype == np.float32
    assert values(data.train) == [round(linear(v), 6) for v in (100, 101, 0, 1, 2)]
    manifest = data.manifest
    assert manifest["test_fraction"] is None and manifest["image_size"] == 32
    assert manifest["skipped_files"] == 0 and manifest["source_pixels"] == "8-bit image files"
    assert manifest["source_layout"] == "train/<class>/ and test/<class>/ folders"
    assert "gamma-decoded" in manifest["image_format"]
    source = manifest["sources"][0]
    assert source["kind"] == "image-folder" and source["path"] == str(root)
    assert source["files"][0]["name"] == "listing(name,size,mtime)"
    assert data.path.name.startswith("folder-pets-") and data.path.parent == cache_dir


def test_single_tree_split_is_stratified_and_seeded(tmp_path, cache_dir):
    root = write_tree(tmp_path / "shapes", {"a": 10, "b": 20})
    data = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert data.test.class_counts() == [2, 4] and data.train.class_counts() == [8, 16]
    assert data.manifest["test_fraction"] == 0.2
    assert sorted(values(data.train) + values(data.test)) == sorted(
        round(linear(100 * label + i), 6) for label, n in enumerate((10, 20)) for i in range(n)
    )
    again = load_dataset(f"folder:{root}", cache_dir=tmp_path / "other-cache")
    np.testing.assert_array_equal(again.test.images, data.test.images)
    reseeded = load_dataset(f"folder:{root}", seed=1, cache_dir=cache_dir)
    assert reseeded.path != data.path and values(reseeded.test) != values(data.test)
    half = load_dataset(f"folder:{root}", test_fraction=0.5, cache_dir=cache_dir)
    assert half.test.class_counts() == [5, 10]


def test_every_class_keeps_a_training_image(tmp_path, cache_dir):
    root = write_tree(tmp_path / "rare", {"a": 1, "b": 9})
    data = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert data.train.class_counts() == [1, 7] and data.test.class_counts() == [0, 2]


def test_validation_split_of_a_folder(tmp_path, cache_dir):
    root = write_tree(tmp_path / "pets", {"cat": 10, "dog": 10})
    data = load_dataset(f"folder:{root}", validation_size=4, cache_dir=cache_dir)
    assert data.validation.class_counts() == [2, 2] and data.train.class_counts() == [6, 6]
    assert data.test.class_counts() == [2, 2] and data.manifest["validation_size"] == 4
    assert not set(values(data.validation)) & set(values(data.train) + values(data.test))


def test_zips_with_and_without_wrapping_folder(tmp_path, cache_dir):
    folder = write_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    files = {
        path.relative_to(tmp_path).as_posix(): path.read_bytes() for path in folder.rglob("*.png")
    }
    extras = {
        "__MACOSX/pets/cat/._0.png": b"resource fork",
        "pets/cat/.DS_Store": b"x",
        "README.txt": b"next to the wrapping folder: ignored",
    }
    wrapped = write_zip(tmp_path / "wrapped.zip", {**files, **extras})
    from_zip = load_dataset(f"folder:{wrapped}", cache_dir=cache_dir)
    from_folder = load_dataset(f"folder:{folder}", cache_dir=cache_dir)
    np.testing.assert_array_equal(from_zip.train.images, from_folder.train.images)
    assert from_zip.manifest["sources"][0]["kind"] == "image-zip"
    assert from_zip.manifest["skipped_files"] == 1  # .DS_Store; __MACOSX is zip metadata
    assert from_zip.manifest["sources"][0]["files"][0]["name"] == "wrapped.zip"
    split = {
        f"{split}/{name}/{i}.jpg": image_bytes(flat(50 * label), "JPEG")
        for split in ("train", "test")
        for label, name in enumerate(("cat", "dog"))
        for i in range(2)
    }
    data = load_dataset(f"folder:{write_zip(tmp_path / 'split.zip', split)}", cache_dir=cache_dir)
    assert data.train.class_counts() == [2, 2] and data.test.class_counts() == [2, 2]
    lone = write_zip(tmp_path / "lone.zip", {"cat/1.png": image_bytes(flat(1))})
    with pytest.raises(DynrouteError, match=r"lone.zip: only one class \(cat\)"):
        load_dataset(f"folder:{lone}", cache_dir=cache_dir)


def test_formats_are_decoded_resized_and_made_rgb(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high
    grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    rgba = rng.integers(0, 256, (9, 9, 4), dtype=np.uint8)
    root = tmp_path / "formats"
    files = {
        "a/1.png": image_bytes(photo),
        "a/2.jpg": image_bytes(flat(90, 16), "JPEG"),
        "a/3.bmp": image_bytes(flat(91, 10), "BMP"),
        "a/4.GIF": image_bytes(flat(92, 14), "GIF"),
        "a/5.webp": image_bytes(flat(93, 12), "WEBP" if features.check("webp") else "PNG"),
        "b/1.png": image_bytes(grey),
        "b/2.png": image_bytes(rgba),
    }
    for name, data in files.items():
        for split in ("train", "test"):
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            (root / split / name).write_bytes(data)
    data = load_dataset(f"folder:{root}", image_size=16, cache_dir=cache_dir)
    images = np.asarray(data.train.images)
    assert images.shape == (7, 3, 16, 16) and data.train.class_counts() == [5, 2]

    def expected(pixels: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(pixels).convert("RGB").resize((16, 16), Image.BILINEAR)
        return linear(np.asarray(resized, dtype=np.float64)).transpose(2, 0, 1)

    np.testing.assert_allclose(images[0], expected(photo), rtol=1e-6)
    np.testing.assert_allclose(images[2], linear(91), rtol=1e-6)  # BMP
    np.testing.assert_allclose(images[3], linear(92), rtol=1e-6)  # GIF (.GIF: any case)
    assert abs(images[1] - linear(90)).max() < 0.02 and abs(images[4] - linear(93)).max() < 0.02
    np.testing.assert_allclose(images[5], expected(grey), rtol=1e-6)  # grey -> 3 equal planes
    np.testing.assert_allclose(images[6], expected(rgba[:, :, :3]), rtol=1e-6)  # alpha dropped
    assert data.path != load_dataset(f"folder:{root}", cache_dir=cache_dir).path


def test_non_images_are_skipped_counted_and_logged(tmp_path, cache_dir, caplog):
    root = write_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    (root / "cat" / "notes.txt").write_text("good cats")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0")
    (root / "README.md").write_text("my pets")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ignored: inside a hidden folder")
    (root / ".ipynb_checkpoints").mkdir()  # not a class
    with caplog.at_level(logging.INFO):
        data = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert data.class_names == ("cat", "dog") and len(data.train) + len(data.test) == 10
    assert data.manifest["skipped_files"] == 4
    assert data.manifest["skipped_examples"] == [
        "README.md",
        "cat/.DS_Store",
        "cat/notes.txt",
        "dog/Thumbs.db",
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4 files" in warnings[0].getMessage()
    assert "<class>/ folders, split by test fraction 0.2" in caplog.text  # layout logged
    caplog.clear()
    load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert not caplog.records  # cached: nothing rebuilt, nothing logged again


def test_undecodable_and_tiny_images_are_refused(tmp_path, cache_dir):
    root = write_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    bad = root / "dog" / "3.png"
    cases = [
        (b"not an image", "dog/3.png: cannot decode image"),
        (image_bytes(flat(1, 40), "JPEG")[:200], "dog/3.png: cannot decode image"),
        (
            image_bytes(np.zeros((20, 5, 3), dtype=np.uint8)),
            r"dog/3.png: image is 5x20 pixels, too small",
        ),
    ]
    for content, message in cases:
        bad.write_bytes(content)
        with pytest.raises(DynrouteError, match=message) as caught:
            load_dataset(f"folder:{root}", cache_dir=cache_dir)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "does not exist"),
        ({"file.txt": b"x"}, "is neither a folder nor a .zip file"),
        ({"cat/1.png": None}, r"only one class \(cat\)"),
        ({"cat/1.png": None, "dog/": None}, "class folder dog holds no images"),
        ({"cat/1.png": None, "dog/notes.txt": b"x"}, "class folder dog holds no images"),
        ({"1.png": None}, "no class folders in it"),
        (
            {f"{s}/{c}/1.png": None for s in ("train", "test") for c in ("cat", "dog")}
            | {"train/emu/1.png": None},
            r"train/ and test/ hold different classes \(only in train/: emu\)",
        ),
        ({"train/cat/1.png": None, "train/dog/1.png": None}, "no class folders in test/"),
        ({"cat/1.png": None, "dog/1.png": None}, "the test split would be empty"),
    ],
)
def test_bad_folders_are_refused(tmp_path, cache_dir, layout, message):
    root = tmp_path / "data"
    for name, content in layout.items():
        if name == "file.txt":
            root = tmp_path / name
            root.write_bytes(content)
            continue
        if name.endswith("/"):
            (root / name).mkdir(parents=True)
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content or image_bytes(flat(7)))
    with pytest.raises(DynrouteError, match=message) as caught:
        load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert "\n" not in str(caught.value)


def test_corrupt_zip_is_refused(tmp_path, cache_dir):
    path = tmp_path / "pets.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(DynrouteError, match="pets.zip is truncated or not a valid zip"):
        load_dataset(f"folder:{path}", cache_dir=cache_dir)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, cache_dir, monkeypatch):
    root = write_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    first = load_dataset(f"folder:{root}", cache_dir=cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("should not rebuild")

    with monkeypatch.context() as patched:
        patched.setattr(user_data, "_write", fail)
        assert load_dataset(f"folder:{root}", cache_dir=cache_dir).path == first.path
    image = root / "cat" / "0.png"
    image.write_bytes(image_bytes(flat(200)))
    os.utime(image, ns=(1, 1))
    after = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    assert after.path != first.path
    assert round(linear(200), 6) in values(after.train) + values(after.test)
    npz = tmp_path / "data.npz"
    np.savez(npz, **arrays())
    before = load_dataset(f"npz:{npz}", cache_dir=cache_dir)
    np.savez(npz, **arrays(count=8))
    assert load_dataset(f"npz:{npz}", cache_dir=cache_dir).path != before.path


def test_options_are_checked(tmp_path, cache_dir, data_root):
    with pytest.raises(DynrouteError, match="hybrid's images are 32x32"):
        load_dataset("hybrid", data_root, image_size=64, cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="cifar2 has its own test split"):
        load_dataset("cifar2", data_root, test_fraction=0.3, cache_dir=cache_dir)
    root = write_tree(tmp_path / "pets", {"cat": 1, "dog": 1}, "train")
    write_tree(root, {"cat": 1, "dog": 1}, "test")
    with pytest.raises(DynrouteError, match="has its own test split"):
        load_dataset(f"folder:{root}", test_fraction=0.3, cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="image size must be between 8 and 1024, got 4"):
        load_dataset(f"folder:{root}", image_size=4, cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="test fraction must lie strictly between 0 and 1"):
        load_dataset(f"folder:{root}", test_fraction=1.0, cache_dir=cache_dir)


# ------------------------------------------------------------------ arrays


@pytest.mark.parametrize(
    ("shape", "dtype", "layout"),
    [
        ((SIDE, SIDE, 3), np.uint8, "NHWC"),
        ((3, SIDE, SIDE), np.float32, "NCHW"),
        ((28, 28), np.uint8, "NHW"),
        ((10, 10, 1), np.float64, "NHWC"),
        ((1, 32, 32), np.uint8, "NCHW"),
    ],
)
def test_npz_layouts_and_dtypes_are_detected(tmp_path, cache_dir, caplog, shape, dtype, layout):
    given = arrays(shape=shape, dtype=dtype)
    np.savez(tmp_path / "data.npz", **given)
    with caplog.at_level(logging.INFO):
        data = load_dataset(f"npz:{tmp_path / 'data.npz'}", cache_dir=cache_dir)
    manifest = data.manifest
    assert manifest["source_layout"].startswith(
        f"{layout} (x_train (6, {', '.join(map(str, shape))})"
    )
    assert manifest["source_pixels"] == np.dtype(dtype).name and layout in caplog.text
    assert manifest["sources"][0]["kind"] == "npz" and manifest["test_fraction"] is None
    images = np.asarray(data.train.images)
    assert images.shape == (6, 3, 32, 32) and data.class_names == ("0", "1")
    if 1 in shape or len(shape) == 2:
        np.testing.assert_array_equal(images[:, 0], images[:, 2])  # grey -> 3 equal planes
    if shape[-1] == 32:  # no resize: pixels exactly as stored, gamma-decoded
        np.testing.assert_allclose(
            images[:, 1], linear(given["x_train"][:, 0].astype(float)), rtol=1e-6
        )
    if dtype == np.uint8:
        assert "gamma-decoded" in manifest["image_format"]
    else:
        assert "kept as given (no gamma)" in manifest["image_format"]


def test_float_pixels_are_kept_as_given(tmp_path, cache_dir):
    given = arrays(shape=(SIDE, SIDE, 3), dtype=np.float32)
    given["x_train"][:] = 0.25
    given["x_train"][0] = 1.0005  # within the tolerance: clipped
    np.savez(tmp_path / "data.npz", **given)
    data = load_dataset(f"npz:{tmp_path / 'data.npz'}", cache_dir=cache_dir)
    assert np.asarray(data.train.images)[1:].min() == np.float32(0.25)
    assert np.asarray(data.train.images)[0].max() == 1.0


def test_npz_names_flips_columns_and_npy_folder(tmp_path, cache_dir):
    given = arrays(classes=3) | {
        "class_names": np.array(["cat", "dog", "emu"]),
        "mirror_symmetric": np.array([True, True, False]),
    }
    given["y_train"] = given["y_train"].reshape(-1, 1)  # Keras-style (N, 1) labels
    np.savez_compressed(tmp_path / "data.npz", **given)
    data = load_dataset(f"npz:{tmp_path / 'data.npz'}", cache_dir=cache_dir)
    assert data.class_names == ("cat", "dog", "emu")
    assert data.mirror_symmetric == (True, True, False)
    assert data.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    folder = tmp_path / "arrays"
    folder.mkdir()
    for name, array in given.items():
        np.save(folder / f"{name}.npy", array)
    from_folder = load_dataset(f"npz:{folder}", cache_dir=cache_dir)
    np.testing.assert_array_equal(from_folder.train.images, data.train.images)
    assert from_folder.manifest["sources"][0]["kind"] == "npy-folder"
    assert len(from_folder.manifest["sources"][0]["files"]) == 6


def test_png_folder_and_npz_of_the_same_pixels_agree(tmp_path, cache_dir):
    given = arrays(count=4, test=2, shape=(20, 26, 3))
    root = tmp_path / "pngs"
    for split in ("train", "test"):
        for index, (pixels, label) in enumerate(
            zip(given[f"x_{split}"], given[f"y_{split}"], strict=True)
        ):
            path = root / split / f"class{label}" / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(pixels))
    np.savez(tmp_path / "same.npz", **given)
    from_npz = load_dataset(f"npz:{tmp_path / 'same.npz'}", cache_dir=cache_dir)
    from_pngs = load_dataset(f"folder:{root}", cache_dir=cache_dir)
    order = np.argsort(given["y_train"], kind="stable")  # the folder lists class by class
    np.testing.assert_array_equal(from_pngs.train.images, np.asarray(from_npz.train.images)[order])


def _replace(**changes):
    def change(given: dict) -> dict:
        return {**given, **changes}

    return change


def _drop(name: str):
    return lambda given: {key: value for key, value in given.items() if key != name}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("x_test"), "no x_test array; an npz dataset needs x_train, y_train"),
        (_replace(y_train=np.arange(5) % 2), "x_train holds 6 images but y_train has 5 labels"),
        (
            _replace(y_test=np.array([0, 1, 2, 3]), class_names=np.array(["a", "b"])),
            "label 3 is out of range",
        ),
        (_replace(y_train=np.array([0, 1, -1, 0, 1, 0])), "label -1 is out of range"),
        (_replace(y_train=np.arange(6) % 2 + 0.0), "float64 labels; labels must be integers"),
        (_replace(y_train=np.eye(2)[np.arange(6) % 2].astype(int)), "one-hot"),
        (_replace(y_train=np.zeros(6, int), y_test=np.zeros(4, int)), "only one class"),
        (
            _replace(y_train=np.arange(6) % 2 + 1, y_test=np.arange(4) % 2 + 1),
            "no image of class 0",
        ),
        (_replace(x_train=np.full((6, SIDE, SIDE, 3), 2.0)), "float pixels range from 2 to 2"),
        (_replace(x_train=np.full((6, SIDE, SIDE, 3), np.nan)), "NaN or infinite"),
        (_replace(x_train=np.zeros((6, 3, SIDE, 3), np.uint8)), "ambiguous layout"),
        (
            _replace(x_train=np.zeros((6, SIDE, SIDE, 4), np.uint8)),
            "no channel axis of size 1 or 3",
        ),
        (_replace(x_train=np.zeros((6, 3, 4, 4), np.uint8)), "images are 4x4 pixels, too small"),
        (_replace(x_train=np.zeros((6, SIDE, SIDE, 3), np.int64)), "int64 pixels; expected uint8"),
        (
            _replace(x_test=np.zeros((0, SIDE, SIDE, 3), np.uint8), y_test=np.zeros(0, int)),
            "test split would be empty",
        ),
        (
            _replace(x_test=np.zeros((4, SIDE, SIDE, 3), np.float32)),
            "differ in layout or pixel type",
        ),
    ],
)
def test_bad_arrays_are_refused(tmp_path, cache_dir, change, message):
    np.savez(tmp_path / "bad.npz", **change(arrays()))
    with pytest.raises(DynrouteError, match=message) as caught:
        load_dataset(f"npz:{tmp_path / 'bad.npz'}", cache_dir=cache_dir)
    assert "\n" not in str(caught.value) and "bad.npz" in str(caught.value)


def test_unreadable_npz_is_refused(tmp_path, cache_dir):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"definitely not numpy")
    with pytest.raises(DynrouteError, match="broken.npz is not a readable .npz file"):
        load_dataset(f"npz:{path}", cache_dir=cache_dir)
    with pytest.raises(DynrouteError, match="missing.npz does not exist"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}", cache_dir=cache_dir)


# ------------------------------------------------------------------ command line


def test_data_info_describes_your_dataset(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["data"])
    root = write_tree(tmp_path / "pets", {"zebra": 5, "ant": 5})
    (root / "ant" / "notes.txt").write_text("x")
    status = cli.main(["data", "info", f"folder:{root}", "--image-size", "16"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"dataset folder:{root}: your images in {root}, 2 classes" in out
    assert "classes: 0=ant, 1=zebra" in out and "(N, 3, 16, 16)" in out
    assert "skipped 1 files (not images, or outside the class folders): ant/notes.txt" in out
    assert "examples; per class: 1 1" in out
    assert f"image-folder at {root}" in out and "names, sizes and modification times" in out
    assert "mirror-symmetric (flipped in augmentation): ant, zebra" in out
    assert f"cache: {cache_dir}/folder-pets-" in out
    np.savez(tmp_path / "data.npz", **arrays())
    assert cli.main(["data", "info", f"npz:{tmp_path / 'data.npz'}"]) == 0
    out = capsys.readouterr().out
    assert "read as: NHWC (x_train (6, 12, 12, 3)" in out and "MD5 of data.npz" in out
    assert cli.main(["data", "info"]) == 0
    assert "folder:PATH" in capsys.readouterr().out
    status = cli.main(["data", "info", "foo:bar"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "unknown dataset prefix 'foo:'" in err
