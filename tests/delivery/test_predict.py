"""``dynroute predict``: files read exactly as training read them, rows and totals,
unreadable files skipped by name, and an export classified without torch."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynroute.cli import main
from dynroute.data.datasets import to_linear
from dynroute.data.files import read_file
from dynroute.data.readers.common import Source
from dynroute.data.readers.image_tree import ImageFolderReader
from dynroute.data.readers.npz_arrays import NpzReader
from dynroute.deploy import load
from helpers.delivery import CLASSES, SIZE, coloured, image_folder

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def test_files_are_read_exactly_as_training_reads_them(tmp_path: Path) -> None:
    """An image tree and an npz, through the training readers and through ``read_file``."""
    tree = tmp_path / "tree"
    images, labels = coloured(6, 1, 40)
    files = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = tree / CLASSES[label] / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        (picture.resize((40 + 7 * index, 31)) if index % 2 else picture).save(path)
        files.append(path)
    reader = ImageFolderReader(dataset="folder", image_size=SIZE, resize=True, split_folders=False)
    reader = replace(reader, classes=tuple(sorted(CLASSES)))
    raw, _ = reader.read(Source("folder", tree, reader), False)
    order = sorted(files, key=lambda p: (p.parent.name, int(p.stem)))
    ours = np.concatenate([read_file(path, SIZE)[1] for path in order])
    np.testing.assert_array_equal(ours, to_linear(raw.train_images))

    npz = tmp_path / "arrays.npz"
    np.savez(npz, x_train=images, y_train=labels, x_test=images[:3], y_test=labels[:3])
    arrays, _ = NpzReader(image_size=SIZE).read(Source("npz", npz, NpzReader(image_size=SIZE)))
    names, ours = read_file(npz, SIZE)
    train = [i for i, name in enumerate(names) if ":x_train[" in name]
    np.testing.assert_array_equal(ours[train], to_linear(arrays.raw.train_images))


def test_predict_writes_rows_and_totals_and_skips_what_it_cannot_read(
    export: Path, tmp_path: Path, capsys
) -> None:
    folder = image_folder(tmp_path)
    missing = tmp_path / "nowhere.png"
    totals = tmp_path / "totals.json"
    code = main(["predict", str(export), str(folder), str(missing), "--batch-size", "3",
                 "--no-progress", "--totals", str(totals)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["file", "class", "confidence", "exit", "macs"]
    names = [Path(row["file"].split(":")[0]).name for row in rows]
    assert names == ["a.png", "b.jpg", "c-rgba.png", "d-palette.gif", "g-16bit.png", "h.npz",
                     "h.npz", "e-gray.webp", "f-tiny.bmp"]  # fmt: skip
    assert rows[5]["file"].endswith("h.npz:x[0]")
    assert {row["class"] for row in rows} <= set(CLASSES)
    assert all(0 < float(row["confidence"]) <= 1 and int(row["macs"]) > 0 for row in rows)
    for name in ("broken.jpg", "notes.txt", "nowhere.png"):
        assert re.search(rf"{name}: .+", err), err
    assert "9 images in" in err and "mean MACs" in err and "exits: exit" in err
    summary = json.loads(totals.read_text())
    assert summary["images"] == 9 and len(summary["unreadable"]) == 3
    assert sum(summary["exits"].values()) == 9
    assert summary["mean_macs"] == pytest.approx(np.mean([int(r["macs"]) for r in rows]))

    # the same rows as JSON lines, and the same answers as the runtime on the arrays
    jsonl = tmp_path / "rows.jsonl"
    assert main(["predict", str(export), str(folder), "--out", str(jsonl), "--no-progress"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["file"] for line in lines] == [row["file"] for row in rows]
    model = load(export)
    pixels = [read_file(folder / "a.png", SIZE)[1], read_file(folder / "h.npz", SIZE)[1]]
    direct = model.predict(np.concatenate(pixels))
    chosen = [line for line in lines if line["file"].endswith(("/a.png", "]"))]
    assert [line["class"] for line in chosen] == [CLASSES[c] for c in direct.predictions]
    assert [line["confidence"] for line in chosen] == pytest.approx(direct.confidences, abs=1e-6)
    capsys.readouterr()
    assert main(["predict", str(export), str(tmp_path / "nothing-here.png"), "--no-progress"]) == 1


def test_predict_on_an_export_overrides_the_policy_and_needs_no_torch(
    export: Path, tmp_path: Path, capsys
) -> None:
    folder = image_folder(tmp_path)
    assert main(["predict", str(export), str(folder), "--policy", "learned", "--no-progress"]) == 0
    assert "learned (given)" in capsys.readouterr().err
    for threshold, exit_name in (("0", "exit1"), ("1", "exit8")):
        options = ["--threshold", threshold, "--no-progress"]
        assert main(["predict", str(export), str(folder), *options]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert {row["exit"] for row in rows} == {exit_name}  # every answer passes 0, none 1
    assert main(["predict", str(export), str(folder), "--target-macs", "1"]) == 2
    assert "--target-macs" in capsys.readouterr().err
    assert main(["predict", str(export), str(folder), "--policy", "budgeted"]) == 2

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = NO_TORCH + (
        "from dynroute.cli import main\n"
        f"code = main(['predict', {str(export)!r}, {str(folder)!r}, '--no-progress'])\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert main(["predict", str(export), str(folder), "--no-progress"]) == 0
    assert result.stdout == capsys.readouterr().out


def test_arrays_in_pieces_are_the_arrays_whole(tmp_path: Path) -> None:
    """Read a few rows at a time, an array gives what it gives read whole, in order and
    named alike, whatever its layout, dtype or storage (compressed, Fortran-ordered, a
    member in a folder of the zip)."""
    from dynroute.data.formats import file_pieces

    images, _ = coloured(11, 2, 20)
    floats = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    path = tmp_path / "mixed.npz"
    np.savez_compressed(path, nhwc=images, nchw=floats, gray=images[..., 0], labels=np.arange(11))
    for rows in (1, 3, 64):
        names, whole = [], []
        for piece_names, piece in file_pieces(path, SIZE, rows):
            assert len(piece) <= rows and piece.dtype == np.float32
            names += piece_names
            whole.append(piece)
        assert names == read_file(path, SIZE)[0]
        np.testing.assert_array_equal(np.concatenate(whole), read_file(path, SIZE)[1])
    assert names[:2] == [f"{path}:gray[0]", f"{path}:gray[1]"] and len(names) == 33
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(images))
    contiguous = tmp_path / "contiguous.npy"
    np.save(contiguous, images)
    np.testing.assert_array_equal(read_file(fortran, SIZE)[1], read_file(contiguous, SIZE)[1])


def test_folders_are_walked_in_the_order_of_sorted_paths(tmp_path: Path) -> None:
    """Walked as they are read, folders still give their files in sorted-path order (a
    folder ``a`` before a file ``a.png``, as ``sorted`` orders paths)."""
    from dynroute.data.files import Failure, expand

    names = ["b.png", "a.png", "a/z.png", "a/b/c.png", "a-b.png", "a b/x.png", "A.png", ".h.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = list(expand([tmp_path, tmp_path / "nowhere"]))
    files = [entry for entry in found if isinstance(entry, Path)]
    assert files == sorted(tmp_path / name for name in names if not name.startswith("."))
    assert found[-1] == Failure(str(tmp_path / "nowhere"), "no such file or folder")


# ---------------------------------------------------------------------- serving
