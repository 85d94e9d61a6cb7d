"""Images and trained runs for the delivery tests (predict, export, serve)."""

from __future__ import annotations

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
from pathlib import Path

import numpy as np
from PIL import Image

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


def make_export(folder: Path) -> Path:
    """The chain at 16 px with random routers, exported with class names and preprocessing."""
    import torch

    from dynroute.core.policy import Policy
    from dynroute.data.files import preprocessing
    from dynroute.delivery.export import export_tree
    from dynroute.nn.models import build_model
    from helpers.routing import scramble_routing

    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(32, 3, SIZE, SIZE, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen)
    tree = scramble_routing(build_model("chain", num_classes=3, image_size=SIZE), x)
    export_tree(
        tree,
        folder,
        policy=Policy("confidence", 0.4),
        class_names=CLASSES,
        preprocessing=preprocessing(None, SIZE),
    )
    return folder


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
        self.lines: list[str] = []

        def pump() -> None:
            for line in stdout:
                self.lines.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
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
                data = response.read()
                kind = response.headers.get("content-type", "")
                return response.status, json.loads(data) if "json" in kind else data.decode()
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        time.sleep(0.2)
        return "".join(self.lines)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------- serve, hostile


def serve_process(export: Path, *options: str) -> subprocess.Popen:
    """``dynroute serve`` in a subprocess where torch cannot be imported, not waited for
    (``Server`` waits until it serves)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["serve", str(export), "--port", "0", "--threads", "1", *options]
    code = NO_TORCH + f"from dynroute.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (a test's unique export path): a server's
    workers are forks of it and carry the same command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def png_of_many_chunks(chunks: int) -> bytes:
    """A 16x16 PNG with ``chunks`` empty ancillary chunks after its header: a few bytes
    each, and seconds of pure-Python parsing for Pillow at 800,000 of them."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    header_end = 8 + 8 + 13 + 4  # the signature, then the IHDR chunk
    chunk = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
    return data[:header_end] + chunk * chunks + data[header_end:]


def jpeg_of_many_comments(markers: int) -> bytes:
    """A 16x16 JPEG with ``markers`` empty comment markers after its start: four bytes each."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * markers + data[2:]


def npy_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def slowest_livez_during(server: Server, work) -> tuple[object, float]:
    """``work()``'s result, and the slowest ``GET /livez`` (seconds) of a client asking
    every 10 ms on its own kept-alive connection while the work ran."""
    import http.client

    host, port = server.address
    done = threading.Event()
    slowest = [0.0]

    def probe() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        while not done.is_set():
            started = time.perf_counter()
            connection.request("GET", "/livez")
            connection.getresponse().read()
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            time.sleep(0.01)
        connection.close()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    time.sleep(0.1)
    try:
        result = work()
        time.sleep(0.1)
    finally:
        done.set()
        thread.join(30)
    return result, slowest[0]
