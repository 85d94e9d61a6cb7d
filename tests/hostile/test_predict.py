"""``dynroute predict`` on hostile inputs and outputs, run as a user would: every file goes
through the gate (``dynroute.gate``), and the rows are written whole, safely, never over
an input."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynroute.cli import main
from helpers.delivery import make_export
from helpers.hostile import png


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("hostile-export") / "chain")


def predict(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv), "--no-progress", "--readers", "1"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_a_folder_of_links_to_itself_is_walked_once(export, tmp_path, capsys, deadline) -> None:
    folder = tmp_path / "loop"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(40))
    os.symlink(".", folder / "x")
    os.symlink(".", folder / "y")
    os.symlink(folder, folder / "z")
    code, out, _ = predict(capsys, export, folder)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["file"] for r in rows] == [str(folder / "a.png")]


def test_fifos_devices_and_sparse_files_are_never_read(export, tmp_path, capsys, deadline) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(80))
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.png")
    with open(folder / "sparse.png", "wb") as handle:
        handle.truncate(2 << 30)  # 2 GB long, nothing on disk
    code, out, err = predict(capsys, export, folder, folder / "pipe.png")
    assert code == 0
    assert [r["file"] for r in csv.DictReader(io.StringIO(out))] == [str(folder / "good.png")]
    assert "pipe.png: a named pipe (FIFO), not a file" in err
    assert "zero.png: a character device, not a file: skipped" in err
    assert "sparse file" in err


def test_array_bombs_are_refused_before_expanding(export, tmp_path, capsys) -> None:
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2000, 512, 512), np.uint8))  # 524 MB of zeros
        archive.writestr("x.npy", buffer.getvalue())
    assert bomb.stat().st_size < 2 << 20
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 16, 16, 3), np.uint8))
    code, out, err = predict(capsys, export, bomb, empty)
    assert code == 1 and out.strip() == "file,class,confidence,exit,macs"
    assert "a zip bomb?" in err and "no image" in err


def test_odd_names_are_escaped_and_cells_never_run_as_formulas(
    export, tmp_path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    names = [b"=HYPERLINK(1).png", b"+1.png", b"-2.png", b"@3.png", b"caf\xe9.png", b"a\rb.png"]
    for name in names:
        (folder / os.fsdecode(name)).write_bytes(png(60))
    monkeypatch.chdir(folder)  # relative names: each cell starts with the file's name
    out_file = tmp_path / "rows.csv"
    given = sorted(os.fsdecode(name) for name in names)
    code = main(["predict", str(export), "--out", str(out_file), "--no-progress", "--", *given])
    assert "Traceback" not in capsys.readouterr().err
    assert code == 0
    text = out_file.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(names) and len(text.splitlines()) == len(names) + 1
    cells = {row["file"] for row in rows}
    assert {"'=HYPERLINK(1).png", "'+1.png", "'-2.png", "'@3.png"} <= cells
    assert "caf\\xe9.png" in cells and "a\\rb.png" in cells
    code, out, _ = predict(capsys, export, os.fsdecode(b"caf\xe9.png"))  # stdout too
    assert code == 0 and "caf\\xe9.png" in out


def test_out_never_writes_over_an_input_and_leaves_no_stale_totals(
    export, tmp_path, capsys
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(png(30))
    before = image.read_bytes()
    code = main(["predict", str(export), str(image), "--out", str(image), "--no-progress"])
    assert code == 2 and image.read_bytes() == before
    assert "--out" in capsys.readouterr().err
    totals = tmp_path / "totals.json"
    totals.write_text(json.dumps({"stale": True}))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, _, _ = predict(capsys, export, broken, "--totals", totals)
    assert code == 1 and "stale" not in totals.read_text()


def test_a_full_disk_leaves_whole_lines_and_names_the_file(
    export, tmp_path, capsys, monkeypatch
) -> None:
    from helpers.hostile import fail_writes_to

    image = tmp_path / "photo.png"
    image.write_bytes(png(30))
    out_file = tmp_path / "rows.csv"
    out_file.write_text("file,class,confidence,exit,macs\nold,row,1,exit1,1\n")
    fail_writes_to(monkeypatch, "rows.csv")
    code = main(["predict", str(export), str(image), "--out", str(out_file), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write {out_file}" in err and "Traceback" not in err
    assert out_file.read_text().endswith("old,row,1,exit1,1\n")  # the previous file, whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_32_bit_integer_image_is_refused_not_clipped(export, tmp_path, capsys) -> None:
    image = tmp_path / "wide.tif"
    Image.fromarray(np.full((16, 16), 200_000, np.int32), "I").save(image)
    code, _, err = predict(capsys, export, image)
    assert code == 1 and "wide.tif" in err and "32-bit" in err
