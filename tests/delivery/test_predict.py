"""``dynroute predict``, ``export`` and ``serve``: files read exactly as training read them,
rows and totals, unreadable files skipped by name, a trained run and its export agreeing,
and the HTTP server (started on a free port, without torch) over real HTTP."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynroute.cli import main
from dynroute.data.datasets import to_linear
from dynroute.data.files import preprocessing, read_arrays, read_file
from dynroute.data.readers.common import Source
from dynroute.data.readers.image_tree import ImageFolderReader
from dynroute.data.readers.npz_arrays import NpzReader
from dynroute.delivery.export import export_tree
from dynroute.deploy import load
from dynroute.errors import DynrouteError
from dynroute.nn.models import build_model
from dynroute.nn.prediction import predict_dense
from dynroute.policy import Policy
from helpers.routing import scramble_routing

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"
SIZE = 16
CLASSES = ("red", "green", "blue")


def coloured(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class is a slightly dominant colour (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.random((n, size, size, 3)) * 120).astype(np.uint8)
    images[np.arange(n), :, :, labels] += 30
    return images, labels


def image_folder(root: Path) -> Path:
    """Image files of many sizes and modes, an .npz, and files that are not images."""
    folder = root / "photos"
    (folder / "more").mkdir(parents=True)
    images, _ = coloured(9, 5, 40)
    rgb = [Image.fromarray(a) for a in images]
    rgb[0].save(folder / "a.png")
    rgb[1].resize((57, 23)).save(folder / "b.jpg", quality=90)
    rgb[2].convert("RGBA").save(folder / "c-rgba.png")
    rgb[3].convert("P").save(folder / "d-palette.gif")
    rgb[4].convert("L").save(folder / "more" / "e-gray.webp")
    rgb[5].resize((5, 7)).save(folder / "more" / "f-tiny.bmp")
    wide = (np.asarray(rgb[6].convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(folder / "g-16bit.png")
    np.savez(folder / "h.npz", x=images[7:9], labels=np.arange(2))
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / ".hidden.png").write_bytes(b"skipped")
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The chain at 16 px with random routers, exported with class names and preprocessing."""
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(32, 3, SIZE, SIZE, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen)
    tree = scramble_routing(build_model("chain", num_classes=3, image_size=SIZE), x)
    folder = tmp_path_factory.mktemp("export") / "chain"
    export_tree(
        tree,
        folder,
        policy=Policy("confidence", 0.4),
        class_names=CLASSES,
        preprocessing=preprocessing(None, SIZE),
    )
    return folder


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
    names, ours = read_arrays(npz, SIZE)
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
    pixels = [read_file(folder / "a.png", SIZE)[1], read_arrays(folder / "h.npz", SIZE)[1]]
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


# ---------------------------------------------------------------------- serving


class Server:
    """``dynroute serve`` in a subprocess where torch cannot be imported."""

    def __init__(self, export: Path, *options: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        args = ["serve", str(export), "--port", "0", "--threads", "1", *options]
        code = NO_TORCH + f"from dynroute.cli import main\nsys.exit(main({args!r}))\n"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        lines: queue.Queue = queue.Queue()
        stdout = self.process.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            found = re.search(r"serving on (http://\S+) ", line)
            if found:
                return found.group(1)
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(seen))

    def request(self, path: str, body: bytes | None = None, headers=None, method=None):
        request = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_serve_answers_like_predict_batches_and_refuses_bad_requests(
    export: Path, tmp_path: Path, capsys
) -> None:
    folder = image_folder(tmp_path)
    assert main(["predict", str(export), str(folder / "a.png"), "--no-progress"]) == 0
    expected = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    server = Server(export, "--max-mb", "0.05", "--batch-size", "8", "--max-wait-ms", "30")
    try:
        status, health = server.request("/health")
        assert status == 200 and health["status"] == "ok" and health["classes"] == list(CLASSES)
        image = (folder / "a.png").read_bytes()
        status, row = server.request("/predict?name=a.png", image)
        assert status == 200
        assert row["file"] == "a.png" and row["class"] == expected["class"]
        assert row["exit"] == expected["exit"] and row["macs"] == int(expected["macs"])
        assert row["confidence"] == pytest.approx(float(expected["confidence"]), abs=1e-5)

        bodies = [(folder / name).read_bytes() for name in ("a.png", "b.jpg", "c-rgba.png")]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: server.request("/predict", bodies[i % 3]), range(24)))
        assert all(status == 200 for status, _ in answers)
        assert len({answer["class"] + answer["exit"] for _, answer in answers[::3]}) == 1
        status, health = server.request("/health")
        assert health["served"] == 25 and health["batches"] < 25  # requests shared batches

        assert server.request("/predict", b"", method="POST")[0] == 400
        status, error = server.request("/predict", b"plain text, not a picture")
        assert status == 400 and "not an image" in error["error"]
        status, error = server.request("/predict", (folder / "broken.jpg").read_bytes())
        assert status == 400 and error["error"]
        status, error = server.request("/predict", os.urandom(60_000))
        assert status == 413 and "bytes" in error["error"]
        form = {"Content-Type": "multipart/form-data; boundary=x"}
        assert server.request("/predict", b"--x--", headers=form)[0] == 415
        assert server.request("/predict")[0] == 405
        assert server.request("/nowhere")[0] == 404
        assert server.request("/health")[1]["status"] == "ok"  # still serving
    finally:
        server.stop()


# ---------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A chain trained a little on coloured images (an npz dataset with a validation split),
    and copies calibrated to the budgeted and the ensemble policy."""
    from dynroute.policies.calibration import calibrate

    root = tmp_path_factory.mktemp("trained")
    x_train, y_train = coloured(300, 0)
    x_test, y_test = coloured(90, 1)
    npz = root / "colours.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(CLASSES))  # fmt: skip
    runs = {"plain": root / "run"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DYNROUTE_CACHE", str(root / "cache"))
        code = main(["train", "--dataset", f"npz:{npz}", "--image-size", str(SIZE),
                     "--iterations", "30", "--batch-size", "32", "--validation-size", "60",
                     "--eval-every", "30", "--strategy", "multi-exit", "--threads", "1",
                     "--no-progress", "--out", str(runs["plain"])])  # fmt: skip
        assert code == 0
        for policy in ("budgeted", "ensemble"):
            runs[policy] = root / policy
            subprocess.run(["cp", "-r", str(runs["plain"]), str(runs[policy])], check=True)
            calibrate(runs[policy], target_macs=1.5e6, policy=policy)
        yield runs


@pytest.mark.slow
def test_a_trained_run_and_its_export_agree_under_every_policy(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from dynroute.runs import open_run

    run = open_run(trained["plain"])
    images, _, _ = run.split("test")
    x = torch.from_numpy(np.array(images))
    tree = run.load_tree().eval()
    cases = [
        ("plain", []),
        ("plain", ["--policy", "confidence", "--threshold", "0.6"]),
        ("plain", ["--policy", "entropy", "--threshold", "0.5"]),
        ("budgeted", []),
        ("ensemble", []),
    ]
    folder = image_folder(tmp_path)
    exits_seen = set()
    for index, (which, options) in enumerate(cases):
        out = tmp_path / f"export{index}"
        assert main(["export", str(trained[which]), "--out", str(out), "--dense", *options]) == 0
        printed = capsys.readouterr().out
        assert "64/64 exits as PyTorch's dense reference" in printed
        model = load(out)
        policy = Policy.from_dict(model.policy)
        reference = predict_dense(tree, x, policy=policy)
        ours = model.predict(images)
        np.testing.assert_array_equal(ours.exits, reference.exits.numpy())
        np.testing.assert_array_equal(ours.macs, reference.macs.numpy())
        np.testing.assert_allclose(ours.logits, reference.logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(model.predict_dense(images).exits, ours.exits)
        exits_seen.add(len(np.unique(ours.exits)))
        # predict on files: the run (PyTorch engine) and its export write the same rows
        rows = {}
        for target in (trained[which], out):
            assert main(["predict", str(target), str(folder), "--no-progress", *options]) == 0
            rows[target] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        by_run, by_export = rows.values()
        assert [(r["class"], r["exit"], r["macs"]) for r in by_run] == [
            (r["class"], r["exit"], r["macs"]) for r in by_export
        ]
    assert max(exits_seen) >= 2  # some operating points split the batch


@pytest.mark.slow
def test_an_export_chooses_a_budget_as_its_run_does(
    trained: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    """The export carries its policy's operating points measured on the validation split
    (the frontier the selection rule chooses from: ``test_selection``), so ``predict EXPORT
    --target-macs`` picks exactly the point the run itself would pick, at default settings."""
    folder = image_folder(tmp_path)
    for which, policy in (("plain", "confidence"), ("ensemble", "ensemble"), ("budgeted", None)):
        out = tmp_path / f"export-{which}"
        options = ["--policy", policy] if policy else []
        if policy == "confidence":
            options += ["--threshold", "0.5"]
        command = ["export", str(trained[which]), "--out", str(out), "--check", "0"]
        assert main([*command, *options]) == 0
        assert "operating points measured on the validation split" in capsys.readouterr().out
        points = load(out).manifest["operating_points"]
        assert points["examples"] == 60 and len(points["points"]) >= 2
        lowest = min(p["mean_macs"] for p in points["points"]) / 1e6
        highest = max(p["mean_macs"] for p in points["points"]) / 1e6
        for target in (lowest * 1.01, (lowest + highest) / 2, highest):
            budget = ["--target-macs", f"{target:.6f}", "--no-progress"]
            rows = {}
            for source in (trained[which], out):
                by_name = ["--policy", policy or which] if source != out else []
                assert main(["predict", str(source), str(folder), *budget, *by_name]) == 0
                rows[source] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
            by_run, by_export = rows.values()
            assert [(r["class"], r["exit"], r["macs"]) for r in by_run] == [
                (r["class"], r["exit"], r["macs"]) for r in by_export
            ]
        too_low = ["--target-macs", f"{lowest / 2:.6f}", "--no-progress"]
        assert main(["predict", str(out), str(folder), *too_low]) == 2
        assert "no operating point stays within" in capsys.readouterr().err
    # without the run's data, the export says why it carries no points, and still works
    out = tmp_path / "no-points"
    options = ["--policy", "confidence", "--threshold", "0.5", "--check", "0"]
    assert main(["export", str(trained["plain"]), "--out", str(out), "--no-operating-points",
                 *options]) == 0  # fmt: skip
    assert load(out).manifest["operating_points"] is None
    capsys.readouterr()
    assert main(["predict", str(out), str(folder), "--target-macs", "1", "--no-progress"]) == 2
    assert "carries no operating points" in capsys.readouterr().err


@pytest.mark.slow
def test_a_guarantee_travels_from_calibrate_into_the_export(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """``calibrate --target-accuracy A --delta D`` certifies an operating point; the export
    carries the guarantee, ``predict`` reports it and the manifest check refuses one that
    does not fit its operating point. An impossible target is one line naming the best
    guarantee at hand and the examples it would need."""
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained["plain"]), str(run)], check=True)
    impossible = ["calibrate", str(run), "--policy", "confidence", "--target-accuracy", "0.995"]
    assert main([*impossible, "--delta", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the best it guarantees is accuracy >=" in err[0], err
    command = ["calibrate", str(run), "--policy", "confidence", "--target-accuracy", "0.3"]
    assert main([*command, "--delta", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "guarantee: accuracy >= 0.3" in out and "Learn-then-Test" in out
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["guarantee"]["delta"] == 0.2 and saved["guarantee"]["n"] == 30
    folder = tmp_path / "export"
    assert main(["export", str(run), "--out", str(folder), "--check", "0"]) == 0
    manifest = load(folder).manifest
    assert manifest["guarantee"]["target"] == "accuracy"
    assert manifest["guarantee"]["policy"] == manifest["policy"]
    capsys.readouterr()
    photos = image_folder(tmp_path)
    assert main(["predict", str(folder), str(photos), "--no-progress"]) == 0
    assert "guaranteed: accuracy >= 0.3" in capsys.readouterr().err
    # another threshold than the certified one: the guarantee no longer applies
    assert main(["predict", str(folder), str(photos), "--threshold", "0.9", "--no-progress"]) == 0
    assert "guaranteed" not in capsys.readouterr().err
    # a manifest whose guarantee names another operating point is refused on load
    from dynroute.deploy.manifest import CHECKSUM_FILE, MANIFEST_FILE, checksum_lines

    edited = json.loads((folder / MANIFEST_FILE).read_text())
    edited["guarantee"]["policy"]["threshold"] = 0.01
    (folder / MANIFEST_FILE).write_text(json.dumps(edited))
    names = [line.split("  ", 1)[1] for line in (folder / CHECKSUM_FILE).read_text().splitlines()]
    (folder / CHECKSUM_FILE).write_text(checksum_lines(folder, names))
    with pytest.raises(DynrouteError, match="its guarantee: it certifies another policy"):
        load(folder)
