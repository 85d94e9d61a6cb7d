"""Finding, verifying and decoding raw files; every bad input gives a clear error."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import cifar_pixels, idx_bytes, png_bytes
from dynroute.core.errors import DynrouteError
from dynroute.data import load_dataset, sources
from dynroute.data.readers.mnist_idx import parse_idx, read_maybe_gzip
from dynroute.data.sources import find_source, identify_source, read_source


def read(dataset: str, root: Path, allow: bool = False):
    return read_source(find_source(dataset, root), allow)


def test_mnist_gz_and_plain_decode(tmp_path, make_mnist):
    for gz in (True, False):
        root = tmp_path / str(gz)
        make_mnist(root, gz=gz)
        raw, provenance = read("mnist", root)
        assert raw.train_images.shape == (20, 28, 28) and raw.test_images.shape == (10, 28, 28)
        assert raw.train_labels.tolist() == [i % 10 for i in range(20)]
        assert provenance.source.kind == "idx" and not provenance.mismatched


def test_missing_data_dir_names_the_fix(tmp_path):
    with pytest.raises(DynrouteError, match="does not exist.*`data_dir`.*DYNROUTE_DATA"):
        find_source("mnist", tmp_path / "nowhere")


def test_no_mnist_found(tmp_path):
    with pytest.raises(DynrouteError, match="no MNIST found in"):
        find_source("mnist", tmp_path)


def test_incomplete_mnist_lists_missing_file(tmp_path, make_mnist):
    folder = make_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DynrouteError, match="incomplete MNIST.*missing t10k-labels-idx1-ubyte"):
        find_source("mnist", tmp_path)


def test_truncated_gzip(tmp_path, make_mnist):
    folder = make_mnist(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DynrouteError, match="not a valid gzip file or is truncated"):
        read("mnist", tmp_path)


def test_wrong_idx_magic():
    with pytest.raises(DynrouteError, match="magic number is 2049, expected 2051"):
        parse_idx(idx_bytes(np.zeros((3, 28, 28)), 2049), "x", 2051)


def test_idx_item_count_vs_length():
    data = idx_bytes(np.zeros((3, 28, 28)), 2051)
    with pytest.raises(DynrouteError, match="announces 3 images.*truncated or corrupt"):
        parse_idx(data[:-5], "x", 2051)


def test_idx_wrong_image_size():
    with pytest.raises(DynrouteError, match="images are 27x28, expected 28x28"):
        parse_idx(idx_bytes(np.zeros((3, 27, 28)), 2051), "x", 2051)


def test_label_image_count_mismatch(tmp_path, make_mnist, monkeypatch):
    folder = make_mnist(tmp_path, gz=False)
    labels = idx_bytes(np.zeros(7, dtype=np.uint8), 2049)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels)
    table = dict(sources.MNIST_MD5, **{"t10k-labels-idx1-ubyte": hashlib.md5(labels).hexdigest()})
    monkeypatch.setattr(sources, "MNIST_MD5", table)
    with pytest.raises(DynrouteError, match="holds 10 images but .* holds 7 labels"):
        read("mnist", tmp_path)


def test_checksum_mismatch_refused_then_allowed(tmp_path, make_mnist):
    make_mnist(tmp_path, trusted=False)  # fakes cannot match the canonical MD5s
    with pytest.raises(DynrouteError, match="checksum mismatch.*`allow_checksum_mismatch`"):
        read("mnist", tmp_path)
    provenance = identify_source(find_source("mnist", tmp_path), allow_checksum_mismatch=True)
    assert len(provenance.mismatched) == 4
    assert provenance.as_dict()["files"][0]["expected_md5"] == "6bbc9ace898e44ae57da46a324031adb"


def test_cifar_image_folder_and_zip(tmp_path, make_cifar):
    for as_zip in (False, True):
        root = tmp_path / str(as_zip)
        make_cifar(root, as_zip=as_zip)
        raw, provenance = read("cifar10", root)
        assert provenance.source.kind == ("image-zip" if as_zip else "image-folder")
        assert raw.train_images.shape == (20, 3, 32, 32) and raw.train_images.dtype == np.uint8
        assert raw.train_labels.tolist() == [i // 2 for i in range(20)]
        assert raw.train_images[3, 0, 0, 0] == cifar_pixels(1, 1)[0, 0, 0]


def test_zip_with_wrapping_folder_and_jpeg(tmp_path):
    path = tmp_path / "cifar-jpeg.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split in ("train", "test"):
            for label, name in enumerate(sources.CIFAR_CLASSES):
                archive.writestr(
                    f"top/{split}/{name}/1.jpg", png_bytes(cifar_pixels(label, 0), "JPEG")
                )
    raw, _ = read("cifar10", tmp_path)
    assert raw.test_labels.tolist() == list(range(10))


def test_missing_class_folder(tmp_path, make_cifar):
    folder = make_cifar(tmp_path)
    for file in (folder / "test" / "dog").iterdir():
        file.unlink()
    (folder / "test" / "dog").rmdir()
    with pytest.raises(DynrouteError, match="missing class folder test/dog"):
        read("cifar10", tmp_path)


def test_empty_class_folder(tmp_path, make_cifar):
    folder = make_cifar(tmp_path)
    for file in (folder / "train" / "cat").iterdir():
        file.unlink()
    with pytest.raises(DynrouteError, match=r"class folder train/cat holds no images \(.png, .jpg"):
        read("cifar10", tmp_path)


def test_unexpected_class_folder(tmp_path, make_cifar):
    folder = make_cifar(tmp_path)
    (folder / "train" / "unicorn").mkdir()
    with pytest.raises(DynrouteError, match="unexpected class folder train/unicorn"):
        read("cifar10", tmp_path)


def test_truncated_zip(tmp_path, make_cifar):
    path = make_cifar(tmp_path, as_zip=True)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DynrouteError, match="truncated or not a valid zip"):
        read("cifar10", tmp_path)


def test_corrupt_and_wrong_size_images(tmp_path, make_cifar):
    folder = make_cifar(tmp_path)
    target = folder / "train" / "ship" / "0001.png"
    target.write_bytes(b"not an image")
    with pytest.raises(DynrouteError, match="0001.png: cannot decode image"):
        read("cifar10", tmp_path)
    target.write_bytes(png_bytes(np.zeros((16, 32, 3), dtype=np.uint8)))
    with pytest.raises(DynrouteError, match="image is 32x16, expected 32x32"):
        read("cifar10", tmp_path)


def _official_tar(
    root: Path, monkeypatch: pytest.MonkeyPatch, test_labels: list[int] | None = None
) -> Path:
    """A tiny tar in the official layout, with checksum tables patched to match it."""
    batches, table = {}, {}
    for name in sources.CIFAR_BATCH_MD5:
        labels = list(range(10))
        if name == "test_batch" and test_labels is not None:
            labels = test_labels
        data = np.stack([cifar_pixels(i, 0).transpose(2, 0, 1).reshape(-1) for i in range(10)])
        batches[name] = pickle.dumps({b"data": data, b"labels": labels})
        table[name] = hashlib.md5(batches[name]).hexdigest()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    root.mkdir(parents=True, exist_ok=True)
    path = root / sources.CIFAR_ARCHIVE_NAME
    path.write_bytes(buffer.getvalue())
    monkeypatch.setattr(sources, "CIFAR_BATCH_MD5", table)
    monkeypatch.setattr(sources, "CIFAR_ARCHIVE_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    return path


def test_official_tar_preferred_over_image_copies(tmp_path, make_cifar, monkeypatch):
    make_cifar(tmp_path, as_zip=True)
    _official_tar(tmp_path, monkeypatch)
    raw, provenance = read("cifar10", tmp_path)
    assert provenance.source.kind == "python-tar"
    assert raw.train_images.shape == (50, 3, 32, 32) and raw.test_labels.tolist() == list(range(10))


def test_truncated_tar(tmp_path, monkeypatch):
    path = _official_tar(tmp_path, monkeypatch)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DynrouteError, match="checksum mismatch"):
        read("cifar10", tmp_path)
    with pytest.raises(DynrouteError, match="truncated or not a valid tar.gz"):
        read("cifar10", tmp_path, allow=True)


def test_foreign_pickle_is_never_unpickled(tmp_path, monkeypatch):
    path = _official_tar(tmp_path, monkeypatch)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path, filter="data")
    path.unlink()
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes() + b"tampered")
    for allow in (False, True):
        # The flag cannot waive this, so the message must not suggest it.
        with pytest.raises(DynrouteError, match="checksum mismatch.*refusing to unpickle") as err:
            read("cifar10", tmp_path, allow=allow)
        assert "`allow_checksum_mismatch`" not in str(err.value)


def test_extracted_batches(tmp_path, monkeypatch):
    path = _official_tar(tmp_path, monkeypatch)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path, filter="data")
    path.unlink()
    raw, provenance = read("cifar10", tmp_path)
    assert provenance.source.kind == "python-batches" and len(raw.train_labels) == 50


def test_gzip_helper_reports_path(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"abc")[:5])
    with pytest.raises(DynrouteError, match=str(path)):
        read_maybe_gzip(path)


# ------------------------------------------------------------ out-of-range labels


def test_idx_label_out_of_range():
    with pytest.raises(DynrouteError, match="x: label 12 is out of range; expected 0-9"):
        parse_idx(idx_bytes(np.array([1, 12]), 2049), "x", 2049)


@pytest.mark.parametrize("bad", [10, -1])
def test_batch_label_out_of_range_names_file_and_split(tmp_path, monkeypatch, bad):
    path = _official_tar(tmp_path, monkeypatch, test_labels=[0, 1, 2, bad, 4, 5, 6, 7, 8, 9])
    with pytest.raises(DynrouteError) as error:
        read("cifar10", tmp_path)
    assert str(error.value).startswith(f"{path} (test labels): label {bad} is out of range")


# ------------------------------------------------------------ unreadable files


@pytest.fixture
def deny_reading(monkeypatch):
    """Make reading a file or listing a folder fail with EACCES.

    By its mode where that works; root ignores modes, so there the refusal is simulated
    at ``io.open``, ``os.open`` and ``os.listdir``, which pathlib, zipfile and dynroute's
    own file opening go through.
    """
    restore: list[tuple[Path, int]] = []
    denied: set[Path] = set()
    real_open, real_os_open, real_listdir = io.open, os.open, os.listdir

    def refuse(path):
        if isinstance(path, str | os.PathLike) and Path(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def guarded_open(file, *args, **kwargs):
        refuse(file)
        return real_open(file, *args, **kwargs)

    def guarded_os_open(file, *args, **kwargs):
        refuse(file)
        return real_os_open(file, *args, **kwargs)

    def guarded_listdir(path="."):
        refuse(path)
        return real_listdir(path)

    def deny(path: Path) -> None:
        if os.geteuid() != 0:
            restore.append((path, path.stat().st_mode))
            path.chmod(0)
            return
        denied.add(path)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        monkeypatch.setattr(os, "listdir", guarded_listdir)

    yield deny
    for path, mode in reversed(restore):
        path.chmod(mode)


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "data"
    path.write_text("not a folder")
    with pytest.raises(DynrouteError, match="data directory .* is not a directory") as error:
        find_source("mnist", path)
    assert "does not exist" not in str(error.value)


def test_unreadable_zip_is_not_called_truncated(tmp_path, make_cifar, deny_reading):
    path = make_cifar(tmp_path, as_zip=True)
    deny_reading(path)
    for action in (identify_source, read_source):
        with pytest.raises(DynrouteError) as error:
            action(find_source("cifar10", tmp_path))
        assert str(error.value) == f"cannot read {path}: Permission denied"


def test_unreadable_image_is_not_called_corrupt(tmp_path, make_cifar, deny_reading):
    folder = make_cifar(tmp_path)
    image = folder / "train" / "cat" / "0001.png"
    deny_reading(image)
    with pytest.raises(DynrouteError) as error:
        read("cifar10", tmp_path)
    assert str(error.value) == f"cannot read {image}: Permission denied"


def test_unreadable_batch(tmp_path, monkeypatch, deny_reading):
    path = _official_tar(tmp_path, monkeypatch)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path, filter="data")
    path.unlink()
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    deny_reading(batch)
    for action in (identify_source, read_source):
        with pytest.raises(DynrouteError) as error:
            action(find_source("cifar10", tmp_path))
        assert str(error.value) == f"cannot read {batch}: Permission denied"


def test_unreadable_data_dir(tmp_path, make_cifar, deny_reading):
    make_cifar(tmp_path)
    deny_reading(tmp_path)
    with pytest.raises(DynrouteError, match=f"cannot read {tmp_path}.*: Permission denied"):
        find_source("cifar10", tmp_path)


# ------------------------------------------------------------ allow_checksum_mismatch


@pytest.mark.parametrize("kind", ["idx", "python-tar", "image-zip", "image-folder"])
def test_allow_checksum_mismatch_works_for_every_reader(
    tmp_path, make_mnist, make_cifar, monkeypatch, cache_dir, kind
):
    dataset = "mnist" if kind == "idx" else "cifar10"
    if kind == "idx":
        make_mnist(tmp_path, trusted=False)
    elif kind == "python-tar":
        _official_tar(tmp_path, monkeypatch)  # official batches inside a re-packed archive
        monkeypatch.setattr(sources, "CIFAR_ARCHIVE_MD5", "0" * 32)
    else:
        make_cifar(tmp_path, as_zip=kind == "image-zip")
    mismatched = kind in ("idx", "python-tar")
    if mismatched:
        with pytest.raises(DynrouteError, match="checksum mismatch.*`allow_checksum_mismatch`"):
            load_dataset(dataset, tmp_path, cache_dir=cache_dir)
    data = load_dataset(dataset, tmp_path, allow_checksum_mismatch=True, cache_dir=cache_dir)
    assert data.manifest["sources"][0]["kind"] == kind
    assert data.manifest["checksum_mismatch_allowed"] is mismatched
    assert data.test.class_counts() == [1] * 10
