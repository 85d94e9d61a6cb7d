"""``dynroute predict`` on hostile inputs and outputs, run as a user would: every file goes
through the gate (``dynroute.io.gate``), and the rows are written whole, safely, never over
an input."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
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


def make_device(path: Path) -> bool:
    """A character device node like /dev/null at ``path`` (needs root; False where it cannot
    be made), so that no test points a command at the system's own devices."""
    try:
        os.mknod(path, 0o20666, os.makedev(1, 3))
    except (OSError, AttributeError):
        return False
    return True


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
    device = make_device(folder / "null.png")
    with open(folder / "sparse.png", "wb") as handle:
        handle.truncate(2 << 30)  # 2 GB long, nothing on disk
    code, out, err = predict(capsys, export, folder, folder / "pipe.png", "/dev/zero")
    assert code == 0
    assert [r["file"] for r in csv.DictReader(io.StringIO(out))] == [str(folder / "good.png")]
    assert "pipe.png: a named pipe (FIFO), not a file" in err
    assert "/dev/zero: a character device, not a file" in err
    if device:
        assert "null.png: a character device, not a file: skipped" in err
    assert "sparse file" in err


def test_links_that_leave_the_folder_are_named_not_followed(
    export, tmp_path, capsys, deadline
) -> None:
    """A link to /etc is one line, not a walk of /etc; links inside the folder still count."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for index in range(30):
        (outside / f"{index}.png").write_bytes(png(index))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(png(50))
    os.symlink("/etc", folder / "etc")
    os.symlink(outside, folder / "elsewhere")
    os.symlink(outside / "3.png", folder / "b.png")
    os.symlink("/proc/kmsg", folder / "k.png")  # never opened: it would block (and consume)
    os.symlink("sub", folder / "again")  # inside: followed, its folder walked once
    os.symlink("sub/a.png", folder / "c.png")  # inside: read
    code, out, err = predict(capsys, export, folder)
    assert code == 0
    files = [r["file"] for r in csv.DictReader(io.StringIO(out))]
    assert files == [str(folder / "again" / "a.png"), str(folder / "c.png")]
    for name, target in (("etc", "/etc"), ("elsewhere", outside), ("b.png", outside / "3.png")):
        assert f"{folder / name}: a link out of {folder} (to {target}): not followed" in err
    assert "k.png: a link out of" in err
    assert "/etc/" not in err and str(outside / "0.png") not in err
    assert len(err.splitlines()) < 15


def test_reads_stop_at_the_size_a_file_reports(export, tmp_path, capsys, deadline) -> None:
    """A "regular" file of size 0 that has content (or would block, like /proc/kmsg) is
    read as empty: no read goes past the size the file's status gives."""
    from dynroute.io import gate

    assert os.stat("/proc/self/status").st_size == 0
    assert gate.read_bytes(Path("/proc/self/status")) == b""
    link = tmp_path / "status.png"
    os.symlink("/proc/self/status", link)
    code, _, err = predict(capsys, export, link)  # named: followed, then read as empty
    assert code == 1 and f"{link}: " in err


def test_empty_and_odd_arrays_are_one_line_each(export, tmp_path, capsys, deadline) -> None:
    """Empty arrays, object arrays, a negative shape, a damaged member, members that are no
    arrays: a line each, never a traceback, never unpickled."""
    cases = tmp_path / "arrays"
    cases.mkdir()
    np.save(cases / "empty.npy", np.zeros((0, 3, 32, 32), np.float32))
    np.save(cases / "objects.npy", np.full((1, 8, 8), None, dtype=object), allow_pickle=True)
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (-4, 8, 8), }"
    header += b" " * (117 - len(header)) + b"\n"
    (cases / "negative.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00" + header + b"\x00" * 256)
    with zipfile.ZipFile(cases / "notes.npz", "w") as archive:
        archive.writestr("readme.txt", "no arrays here")
    buffer = io.BytesIO()
    np.save(buffer, np.full((4, 8, 8), 7, np.uint8))
    damaged = bytearray(buffer.getvalue())
    damaged[-1] ^= 0xFF
    with zipfile.ZipFile(cases / "crc.npz", "w") as archive:
        archive.writestr("x.npy", bytes(buffer.getvalue()))
    data = (cases / "crc.npz").read_bytes().replace(buffer.getvalue(), bytes(damaged))
    (cases / "crc.npz").write_bytes(data)
    (cases / "short.npy").write_bytes(buffer.getvalue()[:-10])
    np.save(cases / "nan.npy", np.full((3, 8, 8), np.nan, np.float32))
    code, out, err = predict(capsys, export, cases)
    assert code == 1 and out.strip() == "file,class,confidence,exit,macs"
    lines = [line for line in err.splitlines() if line.startswith(f"  {cases}")]
    assert len(lines) == 7, err
    reasons = {Path(line.split(": ", 1)[0].strip()).name: line for line in lines}
    assert "found array (0, 3, 32, 32)" in reasons["empty.npy"]
    assert "of object" in reasons["objects.npy"]  # refused by its header, never unpickled
    assert "negative dimension" in reasons["negative.npy"]
    assert "readme.txt (not an array)" in reasons["notes.npz"]
    assert "CRC" in reasons["crc.npz"]
    assert "ends after" in reasons["short.npy"]
    assert "NaN" in reasons["nan.npy"]


def test_an_array_damaged_part_way_keeps_what_was_classified(export, tmp_path, capsys) -> None:
    """Arrays are read a block (of at most a batch) at a time: a fault in a later block
    names the file and how many of its examples came before it."""
    values = np.full((300, 8, 8), 0.5, np.float32)
    values[260] = np.nan
    np.save(tmp_path / "late.npy", values)
    code, out, err = predict(capsys, export, tmp_path / "late.npy", "--batch-size", "50")
    assert code == 0
    assert len(list(csv.DictReader(io.StringIO(out)))) == 250
    assert "NaN" in err and "after its first 250 examples, which were classified" in err


@pytest.mark.slow
def test_many_npz_members_take_linear_time(tmp_path) -> None:
    """Each member is found in a table, not by re-listing every name: 8 times the members
    take about 8 times as long (quadratic would be 64: 2,000 and 16,000 took 0.15 and 7 s
    before); the bound is generous."""
    import time

    from dynroute.data.formats import file_pieces

    def seconds(count: int) -> float:
        path = tmp_path / f"{count}.npz"
        np.savez(path, **{f"a{i}": np.zeros((1, 8, 8), np.uint8) for i in range(count)})
        started = time.perf_counter()
        names = [name for piece in file_pieces(path, 8) for name in piece[0]]
        assert len(names) == count
        return time.perf_counter() - started

    seconds(200)  # warm up
    small, large = seconds(2_000), seconds(16_000)
    assert large < 24 * small + 0.5, (small, large)


@pytest.mark.slow
def test_decoded_memory_is_bounded_by_the_batch_not_the_array(tmp_path) -> None:
    """An 8x8 image becomes 192 times larger as 32 px input: 20,000 of them would be 245 MB
    at once. Read in pieces, the peak stays a few batches' worth."""
    import tracemalloc

    from dynroute.data.files import batches, expand

    with zipfile.ZipFile(tmp_path / "zeros.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((20_000, 8, 8), np.uint8))
        archive.writestr("x.npy", buffer.getvalue())
    assert (tmp_path / "zeros.npz").stat().st_size < 100_000
    tracemalloc.start()
    try:
        count = 0
        for batch in batches(expand([tmp_path / "zeros.npz"]), 32, 64, workers=2):
            count += len(batch.names)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 30 << 20, peak


def test_a_file_whose_first_bytes_contradict_its_suffix_is_refused(
    export, tmp_path, capsys
) -> None:
    """``predict`` reserves memory for one image per image file: an array posing as one (a
    few KB of 100,000 images) is refused by name, never read as thousands of examples."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((100_000, 8, 8), np.uint8))
    with zipfile.ZipFile(tmp_path / "many.png", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", buffer.getvalue())
    (tmp_path / "photo.png").write_bytes(png(70))
    code, out, err = predict(capsys, export, tmp_path)
    assert code == 0
    assert [r["file"] for r in csv.DictReader(io.StringIO(out))] == [str(tmp_path / "photo.png")]
    line = "many.png: its suffix declares an image file, but its first bytes are those of an .npz"
    assert line in err


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


def test_outputs_are_only_regular_files(export, tmp_path, capsys, deadline) -> None:
    """A device, a FIFO, a link (to the terminal: /proc/self/fd/1) or a folder is never
    replaced by rows or totals, nor written through."""
    image = tmp_path / "photo.png"
    image.write_bytes(png(30))
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/proc/self/fd/1", tmp_path / "terminal")
    os.symlink(tmp_path / "elsewhere.csv", tmp_path / "dangling")
    (tmp_path / "folder").mkdir()
    targets = {"fifo": "a named pipe (FIFO)", "terminal": "a link (to /proc/self/fd/1)",
               "dangling": "a link", "folder": "a folder"}  # fmt: skip
    if make_device(tmp_path / "null"):
        targets["null"] = "a character device"
    for name, kind in targets.items():
        for option in ("--out", "--totals"):
            code, out, err = predict(capsys, export, image, option, tmp_path / name)
            assert code == 2 and out == "", err
            line = f"dynroute: error: {option}: cannot write {tmp_path / name}: it is {kind}"
            assert err.startswith(line) and len(err.splitlines()) == 1, err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert os.readlink(tmp_path / "terminal") == "/proc/self/fd/1"
    assert not (tmp_path / "elsewhere.csv").exists()
    if "null" in targets:
        assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*targets, "photo.png"])


def test_outputs_never_replace_the_model_being_run(export, workspace, tmp_path, capsys) -> None:
    """Rows or totals never go into the export or run being run, nor over its checkpoint."""
    from dynroute.deploy import load

    image = tmp_path / "photo.png"
    image.write_bytes(png(30))
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    for option, name in (("--out", "manifest.json"), ("--totals", "SHA256SUMS"),
                         ("--out", "rows.csv")):  # fmt: skip
        code, _, err = predict(capsys, export, image, option, export / name)
        assert code == 2
        assert f"{option} {export / name} is inside the export folder {export}" in err
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    load(export)
    run = workspace / "static"
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for model in (run, run / "checkpoint.pt"):
        code, _, err = predict(capsys, model, image, "--out", run / "checkpoint.pt")
        assert code == 2 and "being run" in err
    assert (run / "checkpoint.pt").read_bytes() == checkpoint


def test_out_and_totals_never_name_one_file(export, tmp_path, capsys, monkeypatch) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(png(30))
    (tmp_path / "same").symlink_to(tmp_path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for totals in ("x.csv", "./x.csv", tmp_path / "same" / "x.csv"):
        code, _, err = predict(capsys, export, image, "--out", "x.csv", "--totals", totals)
        assert code == 2 and f"--out and --totals name the same file {totals}" in err
        assert not (tmp_path / "x.csv").exists()


def test_an_output_never_replaces_a_file_an_input_folder_holds(export, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(30))
    (folder / "old.csv").write_text("my notes")
    code, _, err = predict(capsys, export, tmp_path, "--out", folder / "old.csv")
    assert code == 2 and "is one of the inputs" in err
    assert (folder / "old.csv").read_text() == "my notes"
    (folder / ".hidden.csv").write_text("not an input: hidden")
    for name in ("new.csv", ".hidden.csv"):  # not read: the walk never sees them
        code, _, err = predict(capsys, export, folder, "--out", folder / name)
        assert code == 0, err
        assert [r["file"] for r in csv.DictReader((folder / name).open())] == [
            str(folder / "a.png")
        ]


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
