"""``dynroute serve``: the HTTP server (started on a free port, without torch) answers like
``predict``, batches requests and refuses bad ones, over real HTTP."""

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
from pathlib import Path

import pytest

from dynroute.cli import main
from helpers.delivery import CLASSES, image_folder

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


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
