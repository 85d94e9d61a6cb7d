"""``dynroute serve`` under hostile clients and bad options, on loopback, with bounded loops,
by surface:

- options: every bound is checked before any work starts, in one line naming the option,
  its range and why;
- connections and request heads: idle, trickled, slow, too many, endless;
- bodies: too large, decoding bombs, files of many tiny pieces, odd arrays and queries;
- the event loop: no body, however hostile, holds up ``/livez`` (bounded generously here,
  < 1 s on a busy machine; ``benchmarks/soak_serve.py`` measures the real number);
- workers: one that cannot start, one that dies, SIGTERM while they start, counters
  summed over them;
- the drain: a request that outlives ``--shutdown-timeout`` gets a 503 with a reason.

Every refusal is a 4xx or 503 with a JSON reason, counted in ``/metrics``, with at most one
log line; never a traceback or a bare 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynroute.cli import main
from helpers.delivery import (
    SIZE,
    Server,
    jpeg_of_many_comments,
    make_export,
    npy_body,
    png_of_many_chunks,
    processes_mentioning,
    serve_process,
    slowest_livez_during,
)

pytest.importorskip("onnxruntime", reason="serving an export needs the deploy extra")
pytest.importorskip("uvicorn", reason="serving needs the serve extra")

LIMITS = (
    "--header-timeout", "1", "--request-timeout", "2", "--idle-timeout", "1",
    "--max-connections", "20", "--decode-budget-mb", "40", "--max-mb", "2",
)  # fmt: skip
#: The slowest ``/livez`` a test accepts while hostile work runs (the goal is 100 ms; the
#: tests run on busy shared cores, so they only catch a stalled event loop).
LIVEZ_BOUND = 1.0
NPY = {"Content-Type": "application/x-npy"}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("hostile-serve") / "chain")


@pytest.fixture(scope="module")
def server(export):
    running = Server(export, *LIMITS)
    yield running
    running.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading what it sends)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return False


def _counted(text: str, path: str, status: int) -> int:
    """How many requests to ``path`` answered ``status`` ``/metrics`` says there were."""
    found = re.search(rf'dynroute_requests_total{{path="{path}",status="{status}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def _wait(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    """Exit status and output of ``process``, killed (and the test failed) past ``seconds``."""
    try:
        out, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the server did not stop within {seconds} s:\n{out}")
    return process.returncode, out


# ---------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value", "why"),
    [
        ("--workers", "100000", "core"),
        ("--workers", "0", "core"),
        ("--port", "99999", "TCP port"),
        ("--port", "-1", "TCP port"),
        ("--max-connections", "1000000000", "ulimit -n"),
        ("--max-wait-ms", "nan", "longer only adds delay"),
        ("--max-wait-ms", "60000", "longer only adds delay"),
        ("--max-images", "0", "array request"),
        ("--max-queue", "100000000", "503"),
        ("--decode-threads", "1000", "share the cores"),
        ("--max-pixels", "1000000000000", "MAX_IMAGE_PIXELS"),
        ("--batch-size", "0", "memory"),
        ("--max-mb", "-1", "memory"),
        ("--shutdown-timeout", "inf", "a day"),
        ("--threads", "0", "cores"),
    ],
)
def test_an_option_out_of_range_is_one_line_with_its_range_and_why(capsys, option, value, why):
    """Refused by the parser, before any model is opened (the export does not even exist)."""
    with pytest.raises(SystemExit) as stop:
        main(["serve", "no-such-export", option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("dynroute serve: error: argument ") and option in line
    assert "must be" in line and f"got {value}" in line.replace("'", "") and why in line
    assert "Traceback" not in err


def test_options_that_contradict_each_other_are_refused_before_the_model_opens(capsys):
    assert main(["serve", "no-such-export", "--max-images", "5000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--max-images" in err and "--max-queue" in err
    assert "no-such-export" not in err


def test_a_port_in_use_is_one_line(export, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(export), "--port", str(port), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in err


def test_more_workers_than_memory_holds_are_refused_naming_the_option(monkeypatch):
    """Each worker needs about what the first holds once loaded (here: this process)."""
    from dynroute.core.errors import DynrouteError
    from dynroute.delivery.serve import workers as supervision

    monkeypatch.setattr(supervision, "available_memory", lambda: 1 << 20)
    with socket.socket() as sock:
        supervisor = supervision.Supervisor(lambda: None, sock, 2, supervision.Limits())
        first = supervisor.slots[0]
        first.pid = os.getpid()
        with pytest.raises(DynrouteError, match=r"`workers` must be at most 1 here, got 2"):
            supervisor._check_memory(first)
        for fd in (supervisor.wake_read, supervisor.wake_write):
            os.close(fd)


# ---------------------------------------------------------------------- connections, heads


def test_idle_sockets_and_trickled_headers_are_closed(server: Server) -> None:
    idle = socket.create_connection(server.address)
    trickle = socket.create_connection(server.address)
    trickle.sendall(b"GET /health HTTP/1.1\r\n")
    for _ in range(3):  # one header line at a time, slower than the header deadline allows
        time.sleep(0.5)
        try:
            trickle.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
    assert _closed_within(idle, 5) and _closed_within(trickle, 5)
    assert server.request("/health")[0] == 200


def test_a_slow_body_gets_408_with_a_reason(server: Server) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\x89PNG")
    sock.settimeout(8)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except TimeoutError:
        pytest.fail("the server kept a body sent too slowly open")
    except ConnectionResetError:
        pass
    assert answer.startswith(b"HTTP/1.1 408") and b"took too long to arrive" in answer
    assert server.request("/health")[0] == 200


def test_connections_beyond_the_cap_are_closed_and_health_answers(server: Server) -> None:
    held = [socket.create_connection(server.address) for _ in range(40)]
    try:
        closed = sum(_closed_within(s, 0.2) for s in held)
        assert closed >= 15  # the cap is 20 (some closed by their header deadline too)
        assert server.request("/health")[0] == 200
    finally:
        for s in held:
            s.close()
    assert _metric(server.request("/metrics")[1], "dynroute_refused_connections_total") >= 15


def test_an_endless_request_head_gets_431_and_a_closed_socket(server: Server) -> None:
    """The C parser sets no bound on a head: the server counts its bytes itself."""
    sock = socket.create_connection(server.address)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    answer = b""
    try:
        for _ in range(200):  # 200 x 1 KB header lines: past the 64 KB bound
            sock.sendall(b"X-Filler: " + b"a" * 1014 + b"\r\n")
    except OSError:  # closed once the bound was passed
        pass
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431") and b'{"error":' in answer
    sock.close()
    assert server.request("/health")[0] == 200
    assert _counted(server.request("/metrics")[1], "other", 431) >= 1


def test_a_request_the_parser_cannot_read_gets_a_json_400_counted(server: Server) -> None:
    with socket.create_connection(server.address) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nContent-Length: banana\r\n\r\n")
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error":' in answer
    assert _counted(server.request("/metrics")[1], "other", 400) >= 1


# ---------------------------------------------------------------------- bodies


def test_large_bodies_are_refused_by_their_declared_length(server: Server) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n")
    sock.settimeout(5)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    sock.close()


def test_a_decoding_bomb_is_refused_by_the_decode_budget(server: Server) -> None:
    """A small 16-bit PNG of many pixels (under the pixel limit) would take ~0.2 GB to
    decode: over the 40 MB budget, it is refused before decoding."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4000, 4000), np.uint16)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 2 << 20
    status, error = server.request("/predict", buffer.getvalue())
    assert status == 413 and "budget" in error["error"]
    assert server.request("/health")[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [
        ("/predict?top=%C2%B2", "png", {}, 400, "`top` must be a whole number"),
        ("/predict?top=-1", "png", {}, 400, "`top`"),
        ("/predict?top=99999999999999999999", "png", {}, 400, "`top`"),
        ("/predict?top=4", "png", {}, 400, "0..3"),
        ("/predict?" + "&".join(["a=1"] * 100), "png", {}, 400, "query parameters"),
        ("/predict", "empty-array", NPY, 400, "no image"),
        ("/predict", "many-images", NPY, 413, "over the limit of 1,024"),
        ("/predict", "nan-array", NPY, 400, "[0, 1]"),
        ("/predict", "wrong-shape", NPY, 400, "no channel axis of size 1 or 3"),
        ("/predict", "pickled", NPY, 400, "not a readable .npy"),
        ("/predict", "few-pieces", {}, 400, "pieces"),
        ("/predict", "png", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "form"),
    ],
)
def test_odd_requests_get_a_reason_and_are_counted(server, path, body, headers, status, words):
    bodies = {
        "png": lambda: _png(32),
        "empty-array": lambda: npy_body(np.zeros((0, 3, SIZE, SIZE), np.float32)),
        "many-images": lambda: npy_body(np.zeros((2000, SIZE, SIZE, 3), np.uint8)),
        "nan-array": lambda: npy_body(np.full((2, 3, SIZE, SIZE), np.nan, np.float32)),
        "wrong-shape": lambda: npy_body(np.zeros((2, 5, 8, 8), np.float32)),
        "pickled": lambda: npy_body(np.array([{"a": 1}], dtype=object)),
        "few-pieces": lambda: png_of_many_chunks(150_000),
    }
    before = _counted(server.request("/metrics")[1], "/predict", status)
    answer_status, answer = server.request(path, bodies[body](), headers=headers)
    assert answer_status == status and words in answer["error"]
    text = server.request("/metrics")[1]
    assert _counted(text, "/predict", status) == before + 1
    assert 'status="500"' not in text
    assert "Traceback" not in server.log()


def test_refusals_are_one_line_each_in_the_log(server: Server) -> None:
    server.request("/predict", b"not an image")
    log = server.log()
    assert "Traceback" not in log
    assert "closed a connection" in log or "refused" in log


def test_an_unforeseen_failure_is_a_500_with_its_reason_counted_and_one_log_line(caplog):
    """No bare 500: a model that fails, or a handler that raises, answers JSON with the
    reason, is counted, and logs one line (the app driven in process)."""
    from dynroute.delivery.predict import Predictor
    from dynroute.delivery.serve import ServeApp
    from dynroute.deploy.runtime import ExportPrediction

    def backend(x: np.ndarray) -> ExportPrediction:
        if x.mean() > 0.8:
            raise RuntimeError("the model broke")
        n = len(x)
        return ExportPrediction(np.zeros((n, 3), np.float32), np.zeros(n, int), np.ones(n, int))

    policy = {"name": "confidence", "threshold": 0.5}
    classes, shape = ("a", "b", "c"), (3, SIZE, SIZE)
    predictor = Predictor(Path("m"), "export", classes, shape, {0: "exit0"}, policy, None, "test",
                          backend)  # fmt: skip
    app = ServeApp(predictor, batch_size=4)
    app.prepare()

    async def drive() -> list[tuple[int, bytes]]:
        startup: asyncio.Queue = asyncio.Queue()
        await startup.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan"}, startup.get, _ignore))
        while not app.ready:
            await asyncio.sleep(0.01)
        answers = []
        for path, body in (("/predict", _png(8, 250)), ("/predict", _png(8, 0)),
                           ("/health", b""), ("/metrics", b"")):  # fmt: skip
            if path == "/health":
                app.routes["/health"] = ("GET", _raises)
            answers.append(await _call(app, path, body))
        await startup.put({"type": "lifespan.shutdown"})
        await lifespan
        return answers

    with caplog.at_level("INFO", logger="dynroute.serve"):
        (broken, fine, raised, metrics) = asyncio.run(drive())
    assert broken[0] == 500 and b"the model broke" in broken[1]
    assert fine[0] == 200
    assert raised[0] == 500 and b"internal error (ValueError: a bug)" in raised[1]
    assert _counted(metrics[1].decode(), "/predict", 500) == 1
    assert _counted(metrics[1].decode(), "/health", 500) == 1
    assert all("\n" not in record.getMessage() for record in caplog.records)


def _png(side: int, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


async def _ignore(message: dict) -> None:
    return None


async def _raises(scope: dict, receive) -> None:
    raise ValueError("a bug")


async def _call(app, path: str, body: bytes) -> tuple[int, bytes]:
    """One request through the ASGI app: its status and body."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    method = "POST" if path == "/predict" else "GET"
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(b"content-length", str(len(body)).encode())], "client": None}  # fmt: skip
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


# ---------------------------------------------------------------------- the event loop


@pytest.fixture(scope="module")
def roomy(export):
    """A server that takes 11 MB bodies and 4,096 images a request, in batches of 32."""
    running = Server(export, "--max-mb", "11", "--max-images", "4096", "--batch-size", "32")
    yield running
    running.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [lambda: png_of_many_chunks(800_000), lambda: jpeg_of_many_comments(2_500_000)],
    ids=["png-800k-chunks", "jpeg-2.5M-comments"],
)
def test_a_file_of_millions_of_pieces_is_refused_without_holding_up_livez(roomy, body):
    """Pillow takes seconds of pure Python to open these (10 MB each); they are opened off
    the event loop, and refused after a fraction of a second."""
    data = body()
    assert len(data) > 9 << 20
    (status, answer), slowest = slowest_livez_during(roomy, lambda: roomy.request("/predict", data))
    assert status == 400 and "pieces" in answer["error"]
    assert slowest < LIVEZ_BOUND


@pytest.mark.slow
def test_an_array_of_thousands_of_images_runs_in_batches_without_holding_up_livez(roomy):
    before = roomy.request("/health")[1]["batches"]
    images = np.random.default_rng(0).random((3400, 3, SIZE, SIZE), dtype=np.float32)
    (status, rows), slowest = slowest_livez_during(
        roomy, lambda: roomy.request("/predict?name=a", npy_body(images), headers=NPY)
    )
    assert status == 200 and len(rows) == 3400 and rows[-1]["file"] == "a[3399]"
    assert roomy.request("/health")[1]["batches"] - before >= 3400 // 32  # --batch-size holds
    assert slowest < LIVEZ_BOUND


@pytest.mark.slow
def test_a_large_image_is_decoded_by_a_process_without_holding_up_livez(roomy):
    """WebP's decoder holds the interpreter's lock through most of its decode (tens of
    milliseconds at this size, more for larger ones): a large image is decoded by a separate
    process, which the first such image starts."""
    y, x = np.mgrid[0:3000, 0:3000]
    smooth = np.stack([x * 255 // 3000, y * 255 // 3000, (x + y) * 127 // 3000], -1)
    buffer = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buffer, "WEBP", quality=50)
    for _ in range(2):  # the first starts the decoding process
        (status, row), slowest = slowest_livez_during(
            roomy, lambda: roomy.request("/predict?name=big.webp", buffer.getvalue())
        )
        assert status == 200 and row["file"] == "big.webp"
    assert slowest < LIVEZ_BOUND
    decoding = [pid for pid in _children(roomy.process.pid)
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
    assert len(decoding) == 1


# ---------------------------------------------------------------------- workers


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_server_with_its_error(export):
    """Each worker opens the model itself; this export carries no operating points to
    choose a budget from. The server never says it serves, and exits non-zero."""
    code, out = _wait(serve_process(export, "--workers", "2", "--target-macs", "1"), 90)
    assert code == 2 and "operating points" in out
    assert "serving on" not in out and "Traceback" not in out


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
            ):
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_sigterm_while_workers_start_stops_them_all_and_exits_0(export, tmp_path):
    own = Path(shutil.copytree(export, tmp_path / "own-export"))
    process = serve_process(own, "--workers", "2")
    deadline = time.monotonic() + 60
    while not _children(process.pid) and time.monotonic() < deadline:  # a worker forked
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    code, out = _wait(process, 30)
    assert code == 0 and "stopped" in out and "Traceback" not in out
    time.sleep(0.5)
    assert processes_mentioning(str(own)) == []  # no worker outlives its server


@pytest.mark.slow
def test_a_killed_worker_is_logged_and_replaced_and_counters_hold(export):
    server = Server(export, "--workers", "2")
    try:
        body = _png(20)
        for _ in range(6):
            assert server.request("/predict", body)[0] == 200
        workers = server.request("/health")[1]["workers"]
        assert [w["state"] for w in workers] == ["ready", "ready"]
        scrapes = [server.request("/metrics")[1] for _ in range(6)]  # any worker may answer
        assert {_metric(text, "dynroute_images_total") for text in scrapes} == {6}
        assert {_counted(text, "/predict", 200) for text in scrapes} == {6}

        victim = workers[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = server.request("/health")[1]["workers"]
            if now[0]["state"] == "ready" and now[0]["pid"] != victim:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"worker 0 was not replaced: {now}")
        assert now[0]["restarts"] == 1 and now[1]["pid"] == workers[1]["pid"]
        log = server.log()
        assert f"worker 0 (pid {victim}) died: killed by SIGKILL" in log and "serves" in log
        assert server.request("/predict", body)[0] == 200
        text = server.request("/metrics")[1]
        assert _metric(text, "dynroute_images_total") == 7  # the dead worker's count kept
        assert _metric(text, "dynroute_worker_restarts_total") == 1
        assert _metric(text, "dynroute_workers") == 2
    finally:
        server.stop()
    assert server.process.returncode == 0


# ---------------------------------------------------------------------- the drain


@pytest.mark.slow
def test_a_request_outliving_the_drain_gets_503_and_the_server_exits_0(export):
    server = Server(export, "--shutdown-timeout", "1", "--request-timeout", "30")
    sock = socket.create_connection(server.address)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n\x89PNG")
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    sock.settimeout(10)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"shutdown timeout" in answer
    assert b"connection: close" in answer.lower()
    assert server.process.wait(20) == 0
    log = server.log()
    assert "Traceback" not in log and "went away" not in log
    assert "Internal Server Error" not in log
