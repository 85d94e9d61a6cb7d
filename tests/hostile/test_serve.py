"""``dynroute serve`` under hostile clients, on loopback, with bounded loops: slow bodies,
trickled headers, idle sockets, too many connections, decoding bombs. Each gets a 4xx or a
closed socket with one log line, and ``/health`` keeps answering."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.delivery import Server, make_export

pytest.importorskip("onnxruntime", reason="serving an export needs the deploy extra")
pytest.importorskip("uvicorn", reason="serving needs the serve extra")

LIMITS = (
    "--header-timeout", "1", "--request-timeout", "2", "--idle-timeout", "1",
    "--max-connections", "20", "--decode-budget-mb", "40", "--max-mb", "2",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export = make_export(tmp_path_factory.mktemp("hostile-serve") / "chain")
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


def test_a_slow_body_gets_408_or_a_closed_socket(server: Server) -> None:
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
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
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


def test_large_bodies_are_refused_by_their_declared_length(server: Server) -> None:
    sock = socket.create_connection(server.address)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n")
    sock.settimeout(5)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    sock.close()


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
    assert answer.startswith(b"HTTP/1.1 431")
    sock.close()
    assert server.request("/health")[0] == 200


def test_a_decoding_bomb_is_refused_by_the_decode_budget(server: Server, tmp_path: Path) -> None:
    """A small 16-bit PNG of many pixels (under the pixel limit) would take ~0.5 GB to
    decode: over the 40 MB budget, it is refused before decoding."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4000, 4000), np.uint16)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 2 << 20
    status, error = server.request("/predict", buffer.getvalue())
    assert status == 413 and "budget" in error["error"]
    assert server.request("/health")[0] == 200


def test_refusals_are_one_line_each_in_the_log(server: Server) -> None:
    server.request("/predict", b"not an image")
    log = server.log()
    assert "Traceback" not in log
    assert "closed a connection" in log or "refused" in log
