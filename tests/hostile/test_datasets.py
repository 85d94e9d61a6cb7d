"""Hostile or odd data files stay bounded: every limit is checked before anything is
allocated, read or expanded, and each refusal is one line naming the file."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dynroute.data.readers import image_tree
from helpers.hostile import (
    SRC,
    arrays,
    cli,
    error_line,
    image_folder,
    png,
    refused,
)


# ------------------------------------------------------------------ hostile data
def test_huge_label_is_refused_before_allocating(tmp_path, capsys):
    values = arrays()
    values["y_train"][0] = 10**12
    np.savez(tmp_path / "x.npz", **values)
    line = refused(capsys, "data", "info", f"npz:{tmp_path / 'x.npz'}")
    assert "label 1000000000000 is too large" in line and "MAX_CLASSES" in line


def test_compressed_npz_bomb_is_refused_before_expanding(tmp_path, capsys):
    values = arrays()
    values["x_train"] = np.zeros((30_000, 32, 32, 3), dtype=np.uint8)  # 92 MB of zeros
    values["y_train"] = np.arange(30_000) % 3
    np.savez_compressed(tmp_path / "bomb.npz", **values)
    assert (tmp_path / "bomb.npz").stat().st_size < 1 << 20
    line = refused(capsys, "data", "info", f"npz:{tmp_path / 'bomb.npz'}")
    assert "x_train expands to 92160128 bytes" in line and "MAX_EXPANSION_RATIO" in line


def _forged_npz(path: Path) -> None:
    """x_train's header claims 10^8 images (307 GB); its data is a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**8, 32, 32, 3)}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", header.getvalue() + b"\0" * 64)
        for name, value in arrays().items():
            if name != "x_train":
                buffer = io.BytesIO()
                np.save(buffer, value)
                archive.writestr(f"{name}.npy", buffer.getvalue())


def test_forged_array_header_is_refused_under_a_memory_limit(tmp_path):
    """In a process limited to 1 GiB of address space: refused by the numbers, no MemoryError."""
    _forged_npz(tmp_path / "forged.npz")
    limit = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
        "from dynroute.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "DYNROUTE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", limit, "data", "info", f"npz:{tmp_path / 'forged.npz'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr)
    assert "declares shape (100000000, 32, 32, 3)" in line and "holds only" in line


def test_zip_bomb_in_an_image_zip_is_refused_before_expanding(tmp_path, capsys):
    path = tmp_path / "pets.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("cat", "dog"):
            for index in range(3):
                archive.writestr(f"{name}/{index}.png", png(index))
        archive.writestr("cat/huge.png", bytes(40 << 20))  # 40 MB of zeros, ~40 kB stored
    assert path.stat().st_size < 1 << 20
    line = refused(capsys, "data", "info", f"folder:{path}")
    assert "cat/huge.png expands to 41943040 bytes" in line and "MAX_EXPANSION_RATIO" in line


def test_sparse_file_in_an_image_folder_is_refused_by_size(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    with open(root / "b" / "big.png", "wb") as handle:
        handle.truncate(3 << 30)  # 3 GB long, nothing on disk
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert "big.png is a sparse file: 3221225472 bytes long" in line


def test_oversized_image_file_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    root = image_folder(tmp_path / "pets")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "a" / "noise.png")
    size = (root / "a" / "noise.png").stat().st_size
    monkeypatch.setattr(image_tree, "MAX_IMAGE_FILE_BYTES", 4096)
    read = []
    monkeypatch.setattr(image_tree._FolderTree, "read", lambda self, entry: read.append(entry))
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert f"noise.png holds {size} bytes, more than the limit of 4096" in line
    assert read == []  # refused while listing, before any image was read


def test_fifos_and_devices_in_an_image_folder_are_skipped_by_name(
    tmp_path, capsys, caplog, deadline
):
    root = image_folder(tmp_path / "pets")
    os.mkfifo(root / "a" / "pipe.png")  # opening it would block forever
    (root / "b" / "null.png").symlink_to("/dev/null")
    code, out, err = cli(capsys, "data", "info", f"folder:{root}")
    assert code == 0, err
    warned = caplog.text  # on stderr outside pytest
    assert "skipped 2 file(s) that are not regular files, never opened" in warned
    assert "a/pipe.png (a named pipe (FIFO))" in warned
    assert "b/null.png (a character device)" in warned
    assert "2 classes" in out


def test_a_fifo_given_as_the_data_is_refused_without_opening_it(tmp_path, capsys, deadline):
    os.mkfifo(tmp_path / "data.npz")
    os.mkfifo(tmp_path / "data.zip")
    for name in (f"npz:{tmp_path / 'data.npz'}", f"folder:{tmp_path / 'data.zip'}"):
        line = refused(capsys, "data", "info", name)
        assert "is a named pipe (FIFO), not a regular file; it is never opened" in line


def test_a_folder_name_that_is_not_utf8_is_a_clean_message(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    bad = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(bad)
    for index in range(3):
        with open(os.path.join(bad, b"%d.png" % index), "wb") as handle:
            handle.write(png(index))
    line = refused(capsys, "data", "info", f"folder:{root}")
    assert "the name b'caf\\xe9' is not valid UTF-8; rename it" in line


def test_a_gzip_bomb_posing_as_mnist_is_stopped(tmp_path, capsys, make_mnist):
    folder = make_mnist(tmp_path / "raw")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(40 << 20)))
    line = refused(capsys, "data", "info", "mnist", "--data-dir", tmp_path / "raw")
    assert "train-labels-idx1-ubyte.gz expands to more than" in line


def test_an_official_copy_is_the_same_data_in_any_layout(tmp_path, make_mnist):
    from dynroute.data import load_dataset

    make_mnist(tmp_path / "gz", gz=True)
    make_mnist(tmp_path / "plain", gz=False)
    a = load_dataset("mnist", tmp_path / "gz", cache_dir=tmp_path / "cache-a")
    b = load_dataset("mnist", tmp_path / "plain", cache_dir=tmp_path / "cache-b")
    assert a.fingerprint == b.fingerprint and a.content_fingerprint == b.content_fingerprint
