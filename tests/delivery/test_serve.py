"""``dynroute serve``: the HTTP server (started on a free port, without torch) answers like
``predict``, batches requests and refuses bad ones, over real HTTP."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from dynroute.cli import main
from helpers.delivery import CLASSES, SIZE, Server, image_folder

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


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

        large = io.BytesIO()  # decoded by the pool, under the decode budget (not inline)
        Image.new("RGB", (400, 300), (200, 40, 30)).save(large, "PNG")
        status, row = server.request("/predict?name=large.png", large.getvalue())
        assert status == 200 and row["file"] == "large.png" and row["class"] in CLASSES

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


def test_the_server_reports_metrics_model_and_readiness_and_serves_arrays(
    export: Path, tmp_path: Path
) -> None:
    import numpy as np

    server = Server(export, "--batch-size", "8")
    try:
        assert server.request("/livez") == (200, {"status": "alive"})
        assert server.request("/readyz") == (200, {"ready": True})
        status, model = server.request("/model")
        assert status == 200 and model["policy"]["name"] == "confidence"
        assert model["guarantee"] is None and model["classes"] == list(CLASSES)
        folder = image_folder(tmp_path)
        status, row = server.request("/predict?name=a.png&top=2", (folder / "a.png").read_bytes())
        assert status == 200 and [t["class"] for t in row["top"]][0] == row["class"]
        assert len(row["top"]) == 2 and row["top"][0]["score"] >= row["top"][1]["score"]
        buffer = io.BytesIO()
        np.save(buffer, np.random.default_rng(0).random((5, 3, SIZE, SIZE)).astype(np.float32))
        headers = {"Content-Type": "application/x-npy"}
        status, rows = server.request("/predict?name=batch", buffer.getvalue(), headers=headers)
        assert status == 200 and [r["file"] for r in rows] == [f"batch[{i}]" for i in range(5)]
        status, error = server.request("/predict", b"\x93NUMPY garbage", headers=headers)
        assert status == 400 and ".npy" in error["error"]
        status, text = server.request("/metrics")
        assert status == 200
        assert 'dynroute_requests_total{path="/predict",status="200"} 2' in text
        assert "dynroute_request_seconds_bucket" in text and "dynroute_exits_total" in text
        assert "dynroute_images_total 6" in text
    finally:
        server.stop()


def _format_samples(folder: Path) -> list[Path]:
    """Files of every registered format, a few layouts each: image files of many modes
    and sizes, arrays NHW, NHWC and NCHW, uint8 and float, an .npz of several."""
    import numpy as np

    from helpers.delivery import coloured

    folder.mkdir()
    images, _ = coloured(6, 7, 40)
    rgb = [Image.fromarray(a) for a in images]
    rgb[0].save(folder / "rgb.png")
    rgb[1].convert("L").save(folder / "grey.png")
    rgb[2].convert("RGBA").save(folder / "rgba.png")
    rgb[3].resize((57, 23)).save(folder / "photo.jpg", quality=90)
    rgb[4].convert("P").save(folder / "palette.gif")
    rgb[5].resize((5, 7)).save(folder / "tiny.bmp")
    wide = np.asarray(rgb[0].convert("L")).astype(np.uint16) * 257
    Image.fromarray(wide).save(folder / "grey-16bit.png")
    np.save(folder / "nhw.npy", images[:4, :32, :32, 0])  # (4, 32, 32) uint8
    np.save(folder / "nhwc.npy", images[:3])  # (N, H, W, C) uint8
    np.save(folder / "nchw.npy", images[:2].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    np.save(folder / "grey-channel.npy", images[:2, ..., :1])
    floats = images[4:].astype(np.float64) / 255
    np.savez_compressed(
        folder / "arrays.npz", x=images[:2], grey=images[2:4, ..., 1], floats=floats, labels=[0, 1]
    )
    return sorted(folder.iterdir())


def test_serve_classifies_every_format_as_predict_does(
    export: Path, tmp_path: Path, capsys
) -> None:
    """For every registered format and a few layouts each, ``predict`` on the file and
    ``serve`` on the same bytes as a body (no content type: its first bytes tell) give the
    same rows: names, classes, exits, MACs and confidences."""
    import json

    from dynroute.data.formats import FORMATS, by_suffix

    files = _format_samples(tmp_path / "inputs")
    assert {by_suffix(path).name for path in files} == set(FORMATS)
    out = tmp_path / "rows.jsonl"
    assert main(["predict", str(export), *map(str, files), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "unreadable" not in capsys.readouterr().err
    expected = [json.loads(line) for line in out.read_text().splitlines()]
    server = Server(export, "--batch-size", "8")
    try:
        served = []
        for path in files:
            status, answer = server.request(f"/predict?name={path}", path.read_bytes())
            assert status == 200, (path.name, answer)
            served += [answer] if by_suffix(path).one_example else answer
    finally:
        server.stop()
    assert len(served) == len(expected) > len(files)
    for mine, theirs in zip(served, expected, strict=True):
        assert {k: mine[k] for k in ("file", "class", "exit", "macs")} == {
            k: theirs[k] for k in ("file", "class", "exit", "macs")
        }
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-5)


def test_a_body_is_read_as_its_format_declares_or_its_first_bytes_say(
    export: Path, tmp_path: Path
) -> None:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 8, 8), np.uint8), labels=np.arange(3))
    arrays = buffer.getvalue()
    server = Server(export, "--max-images", "4")
    try:
        status, rows = server.request("/predict?name=a.npz", arrays)
        assert status == 200 and [r["file"] for r in rows] == [f"a.npz:x[{i}]" for i in range(3)]
        zipped = {"Content-Type": "application/zip"}
        assert server.request("/predict?format=npz", arrays, headers=zipped)[0] == 200
        status, error = server.request("/predict", arrays, headers={"Content-Type": "image/png"})
        assert status == 400 and "its first bytes are those of an .npz archive" in error["error"]
        status, error = server.request("/predict?format=tiff", arrays)
        assert status == 400 and "unknown format 'tiff'" in error["error"]
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((5, 8, 8), np.uint8))
        status, error = server.request("/predict", buffer.getvalue())
        assert status == 413 and "holds 5 images, over the limit of 4" in error["error"]
    finally:
        server.stop()


def test_accepted_connections_never_wait_for_nagle() -> None:
    """The listening socket is a TCP socket (IPPROTO_TCP) with TCP_NODELAY, which every
    accepted connection inherits: a kept-alive answer goes out at once."""
    import socket

    from dynroute.delivery.serve import listening_socket

    listener = listening_socket("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert listener.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        listener.close()


def test_sigterm_drains_in_flight_requests_and_exits_0(export: Path, tmp_path: Path) -> None:
    server = Server(export, "--max-wait-ms", "1000", "--batch-size", "64")
    folder = image_folder(tmp_path)
    body = (folder / "a.png").read_bytes()
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(server.request, "/predict", body) for _ in range(4)]
        time.sleep(0.5)  # the requests are in flight, waiting for their batch
        server.process.send_signal(signal.SIGTERM)
        answers = [p.result() for p in pending]
    assert all(status == 200 for status, _ in answers)
    assert server.process.wait(30) == 0


def test_batches_hold_at_most_the_batch_size_and_run_in_the_models_thread() -> None:
    """Requests of 1 to 10 images (an array is split) share batches of at most 4; the
    model never runs on the event loop's thread; every request gets its own rows, in order."""
    import asyncio
    import threading

    import numpy as np

    from dynroute.delivery.serve import Batcher

    class Model:
        def __init__(self) -> None:
            self.batches: list[int] = []
            self.threads: set[str] = set()

        def predict(self, x: np.ndarray) -> np.ndarray:
            self.batches.append(len(x))
            self.threads.add(threading.current_thread().name)
            time.sleep(0.01)
            return x.reshape(len(x), -1).sum(axis=1)

        def rows(self, names: None, sums: np.ndarray) -> list[dict]:
            return [{"sum": float(v)} for v in sums]

    sizes = [1, 5, 3, 10, 2, 4]

    async def ask(batcher: Batcher) -> list[list[float]]:
        batcher.start()
        try:
            requests = [np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) + 100 * k
                        for k, n in enumerate(sizes)]  # fmt: skip
            answers = await asyncio.gather(*(batcher.submit(x) for x in requests))
        finally:
            batcher.stop()
        return [[table[r]["sum"] for _, table, first, count in parts
                 for r in range(first, first + count)] for parts in answers]  # fmt: skip

    model = Model()
    batcher = Batcher(model, batch_size=4, max_wait_ms=5, max_queue=64)
    sums = asyncio.run(ask(batcher))
    assert sums == [[100.0 * k + i for i in range(n)] for k, n in enumerate(sizes)]
    assert max(model.batches) <= 4 and sum(model.batches) == sum(sizes)
    assert model.threads == {"dynroute-model"}
    assert batcher.served == sum(sizes) and batcher.queued == 0


def test_a_full_queue_answers_503() -> None:
    import asyncio

    import numpy as np

    from dynroute.delivery.serve import Batcher, ClientError

    async def ask() -> int:
        batcher = Batcher(None, batch_size=4, max_wait_ms=0, max_queue=8)  # never started
        with pytest.raises(ClientError) as refused:
            await batcher.submit(np.zeros((9, 3, 2, 2), np.float32))
        return refused.value.status

    assert asyncio.run(ask()) == 503


def test_serve_holds_a_budget_and_reports_it(trained: dict, tmp_path: Path) -> None:
    """``serve --target-macs M --hold``: the window counts served images only (not the
    warm-up batch), and ``/metrics`` and ``/model`` report the budget."""
    out = tmp_path / "export"
    assert main(["export", str(trained["plain"]), "--out", str(out), "--check", "0",
                 "--policy", "confidence", "--threshold", "0.5"]) == 0  # fmt: skip
    server = Server(out, "--target-macs", "1.5", "--hold", "--batch-size", "8")
    try:
        body = (image_folder(tmp_path) / "a.png").read_bytes()
        for _ in range(5):
            assert server.request("/predict", body)[0] == 200
        status, model = server.request("/model")
        assert status == 200 and model["hold"]["target_macs"] == 1.5e6
        assert model["hold"]["window_examples"] == 5
        text = server.request("/metrics")[1]
        assert "dynroute_budget_target_macs 1.5e+06" in text
        assert "dynroute_budget_drift_ratio" in text
    finally:
        server.stop()
