"""A soak of ``dynroute serve``: hours of hostile traffic compressed into minutes, on loopback.

Starts ``dynroute serve EXPORT_OR_RUN --workers 2``, warms it up (healthy load for 5 s, and
a few large images, which start the workers' decoding processes), then measures, in order:

1. *unloaded*: the healthy clients alone (``concurrency`` minus the hostile ones, each on
   one kept-alive connection sending PNGs back to back) for ``--baseline-seconds``;
2. *the soak*: for ``--minutes``, the same healthy clients with hostile ones mixed in, to a
   total of ``--concurrency`` connections: slow bodies and slow heads (trickled a few bytes
   at a time), idle sockets, malformed requests (not images, broken files, bad arrays, a
   request line the parser cannot read, Unicode digits for ``top``, files of many tiny
   pieces, multipart forms), oversized ones (a declared length over the limit, an image
   over the pixel limit, an array of too many images; and a large WebP, which the server
   decodes in a separate process) and clients that disconnect halfway through a body or
   before reading their answer. A probe of its own process asks ``/livez`` every 50 ms,
   and the resident memory of the server's processes (the supervisor, its workers and
   their decoding processes) is sampled every ``--sample-seconds``;
3. SIGTERM, while the load still runs: the server must exit 0 within its drain deadline
   (``--shutdown-timeout`` and the 2 s the server allows past it to close connections).

It reports, and checks: no crash (the workers that started are the ones that end, no
restarts), no 5xx (from any client, and none in ``/metrics``), flat memory (over the
processes alive throughout, the mean over the last fifth of the soak within 10 % of the
mean over its second fifth; the whole curve is printed), the healthy clients' p99 within
3x the unloaded p99, and the stop; and it reports the slowest ``/livez`` (the goal: 100 ms).
Exit status 1 if a check fails.

    python benchmarks/soak_serve.py EXPORT_OR_RUN [--minutes 10] [--workers 2]
        [--concurrency 64] [--hostile 16] [--json FILE]

The load generator runs on the same machine (one process, asyncio), so on a small machine
it takes cores from the server: the numbers describe the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import platform
import signal
import statistics
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Server, exchange, rss_mb  # noqa: E402

#: The soak passes if memory over its last fifth is within this share of its second fifth.
MEMORY_GROWTH = 0.10
#: The soak passes if the healthy clients' p99 is within this factor of the unloaded p99.
P99_FACTOR = 3.0
#: Seconds the server allows past --shutdown-timeout to close what is left (DRAIN_GRACE).
DRAIN_GRACE = 2.0


def png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def post(path: str, body: bytes, kind: str = "image/png") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: {kind}\r\n\r\n"
    ).encode() + body


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Load:
    """The clients of one phase and what they saw."""

    def __init__(self, port: int, healthy: list[bytes], hostile: dict[str, list]) -> None:
        self.port = port
        self.healthy_requests = healthy
        self.hostile_requests = hostile  # kind -> [(name, whole request)]
        self.latencies: list[float] = []
        self.healthy: Counter = Counter()  # status (or what went wrong) -> count
        self.hostile: Counter = Counter()  # (kind, status) -> count
        self.stop = asyncio.Event()

    async def healthy_client(self, seed: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for k in itertools.count(seed):
                if self.stop.is_set():
                    return
                started = time.perf_counter()
                status, _ = await exchange(
                    reader, writer, self.healthy_requests[k % len(self.healthy_requests)]
                )
                self.latencies.append(time.perf_counter() - started)
                self.healthy[status] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            if not self.stop.is_set():
                self.healthy[type(exc).__name__] += 1
        finally:
            writer.close()

    async def hostile_client(self, seed: int) -> None:
        kinds = [self.slow_body, self.slow_head, self.idle, self.malformed, self.oversized,
                 self.disconnecting]  # fmt: skip
        for k in itertools.count(seed):
            if self.stop.is_set():
                return
            kind = kinds[k % len(kinds)]
            try:
                outcome = await kind(k)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                outcome = "closed"
            self.hostile[(kind.__name__, outcome)] += 1

    async def _answer(self, reader: asyncio.StreamReader, seconds: float) -> str:
        """The status the server answers with, or 'closed' if it closes the connection."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return "closed"
        return head[9:12].decode()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _trickle(self, head: bytes, piece: bytes) -> str:
        """``head``, then ``piece`` every half second until the server answers or closes."""
        reader, writer = await self._connect()
        try:
            writer.write(head)
            answer = asyncio.ensure_future(self._answer(reader, 120))
            while not answer.done() and not self.stop.is_set():
                writer.write(piece)
                await asyncio.wait([answer], timeout=0.5)
            return answer.result() if answer.done() else "stopped"
        finally:
            writer.close()

    async def slow_body(self, k: int) -> str:
        """Declares 100 KB, then trickles 10 bytes every half second."""
        head = b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n"
        return await self._trickle(head, b"\x89PNG\r\n\x1a\n\x00\x00")

    async def slow_head(self, k: int) -> str:
        """A request head sent one header line every half second."""
        return await self._trickle(b"GET /health HTTP/1.1\r\n", b"X-Slow: 1\r\n")

    async def idle(self, k: int) -> str:
        reader, writer = await self._connect()
        try:
            return await self._answer(reader, 120)
        finally:
            writer.close()

    async def _send(self, kind: str, k: int) -> str:
        """One of ``kind``'s requests, on a new connection: 'its name: status'."""
        choices = self.hostile_requests[kind]
        name, request = choices[(k // 6) % len(choices)]
        reader, writer = await self._connect()
        try:
            writer.write(request)
            return f"{name}: {await self._answer(reader, 60)}"
        finally:
            writer.close()

    async def malformed(self, k: int) -> str:
        return await self._send("malformed", k)

    async def oversized(self, k: int) -> str:
        return await self._send("oversized", k)

    async def disconnecting(self, k: int) -> str:
        """Half a body then gone; or a whole request, gone before the answer."""
        reader, writer = await self._connect()
        request = self.healthy_requests[k % len(self.healthy_requests)]
        writer.write(request[: len(request) // 2] if k % 2 else request)
        await writer.drain()
        writer.close()
        return "left"

    async def run(self, seconds: float, healthy: int, hostile: int, tick=None) -> None:
        tasks = [asyncio.ensure_future(self.healthy_client(k)) for k in range(healthy)]
        tasks += [asyncio.ensure_future(self.hostile_client(k)) for k in range(hostile)]
        ends = time.monotonic() + seconds
        while time.monotonic() < ends and not self.stop.is_set():
            await asyncio.sleep(min(0.2, ends - time.monotonic()))
            if tick is not None:
                tick()
        self.stop.set()
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


class LivezProbe:
    """``GET /livez`` every 50 ms from a process of its own (this one's event loop is busy
    with the clients, and would add its own delays to what it measures)."""

    def __init__(self, port: int) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [sys.executable, __file__, "--probe", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> list[float]:
        """The latencies seen, in seconds."""
        out, _ = self.process.communicate("", timeout=60)
        return json.loads(out)


def probe(port: int) -> None:
    """``--probe PORT``: ask ``/livez`` every 50 ms until stdin closes, then print the
    latencies (seconds) as one JSON list."""
    import http.client
    import threading

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    latencies: list[float] = []
    connection = None
    while not done.is_set():
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.perf_counter()
            connection.request("GET", "/livez")
            connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException):
            connection = None
        done.wait(0.05)
    print(json.dumps(latencies))


def hostile_requests(side: int) -> dict[str, list[tuple[str, bytes]]]:
    """Requests the server must refuse, each with a 4xx and a reason: malformed ones, and
    oversized ones (and one large image it decodes)."""
    pieces = png(side, 0)
    chunk = b"\x00\x00\x00\x00zzZz" + zlib.crc32(b"zzZz").to_bytes(4, "big")  # empty, ancillary
    many_pieces = pieces[:33] + chunk * 80_000 + pieces[33:]  # after the signature and header
    over_pixels = io.BytesIO()
    Image.new("L", (8000, 6000)).save(over_pixels, "PNG")
    y, x = np.mgrid[0:2000, 0:2000]
    large = io.BytesIO()
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(
        large, "WEBP", quality=50
    )

    def array(values: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, values)
        return post("/predict", buffer.getvalue(), "application/x-npy")

    malformed = [
        ("not-an-image", post("/predict", b"plain text, not a picture")),
        ("broken-jpeg", post("/predict", b"\xff\xd8\xff\xe0 truncated")),
        ("unicode-top", post("/predict?top=%C2%B2", png(side, 1))),
        ("many-pieces", post("/predict", many_pieces)),
        ("multipart", post("/predict", b"--x--", "multipart/form-data; boundary=x")),
        ("bad-request-line", b"GARBAGE \x00\x01 NOT HTTP\r\n\r\n"),
        ("empty-body", post("/predict", b"")),
        ("no-such-path", b"GET /admin HTTP/1.1\r\nHost: soak\r\n\r\n"),
        ("empty-array", array(np.zeros((0, 3, side, side), np.float32))),
        ("nan-array", array(np.full((2, 3, side, side), np.nan, np.float32))),
    ]
    oversized = [
        (
            "declared-500MB",
            b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Length: 500000000\r\n\r\n",
        ),  # fmt: skip
        ("48M-pixels", post("/predict", over_pixels.getvalue())),
        ("5000-images", array(np.zeros((5000, side, side, 3), np.uint8))),
        ("4M-pixels-webp", post("/predict", large.getvalue())),  # decoded, by a process
    ]
    return {"malformed": malformed, "oversized": oversized}


def memory_growth(curve: list[tuple[float, dict[int, float]]]) -> tuple[float, float]:
    """Mean MB over the soak's second fifth and over its last, of the processes alive in
    both (one started between, like a decoding process, is a step, not a leak)."""
    fifth = max(1, len(curve) // 5)
    early, late = curve[fifth : 2 * fifth] or curve[:1], curve[-fifth:]
    both = set.intersection(*(set(mbs) for _, mbs in early + late))

    def mean(samples: list) -> float:
        return statistics.mean(sum(mbs[pid] for pid in both) for _, mbs in samples)

    return mean(early), mean(late)


def workers_of(server: Server) -> list[int]:
    health = json.loads(request(server.port, b"GET /health HTTP/1.1\r\nHost: soak\r\n\r\n"))
    return [w["pid"] for w in health.get("workers", [])]


async def at_once(port: int, messages: list[bytes]) -> None:
    """Each message on a connection of its own, all at once (so that they reach every
    worker)."""

    async def one(message: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await exchange(reader, writer, message)
        finally:
            writer.close()

    await asyncio.gather(*(one(message) for message in messages))


def request(port: int, message: bytes) -> bytes:
    async def once() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return (await exchange(reader, writer, message))[1]
        finally:
            writer.close()

    return asyncio.run(once())


def main() -> int:
    if sys.argv[1:2] == ["--probe"]:
        probe(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="EXPORT_OR_RUN")
    parser.add_argument("--minutes", type=float, default=10.0, help="the soak's length")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="connections in all")
    parser.add_argument("--hostile", type=int, default=16, help="of them, hostile clients")
    parser.add_argument(
        "--baseline-seconds", type=float, default=None,
        help="the unloaded run (default: a tenth of the soak, 10 to 60 s)",
    )  # fmt: skip
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="memory samples")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    soak = 60 * args.minutes
    baseline = args.baseline_seconds or min(60.0, max(10.0, soak / 10))
    healthy = args.concurrency - args.hostile

    server = Server(
        args.model, "--workers", str(args.workers), "--shutdown-timeout",
        str(args.shutdown_timeout),
    )  # fmt: skip
    try:
        side = json.loads(request(server.port, b"GET /health HTTP/1.1\r\nHost: s\r\n\r\n"))[
            "image_size"
        ]
        bodies = [post("/predict?name=soak.png", png(side, seed)) for seed in range(64)]
        hostile = hostile_requests(side)
        started_workers = workers_of(server)
        print(
            f"serving {args.model} on port {server.port} with workers {started_workers}; "
            f"warm-up, then an unloaded run: {healthy} healthy clients for {baseline:.0f} s",
            flush=True,
        )
        # warm-up: the models' first batches, and large images on new connections (most
        # likely reaching every worker), so that decoding processes start before the soak
        warm = Load(server.port, bodies, hostile)
        asyncio.run(warm.run(5, healthy, 0))
        large = next(message for name, message in hostile["oversized"] if "webp" in name)
        for _ in range(3):
            asyncio.run(at_once(server.port, [large] * 4 * args.workers))

        unloaded = Load(server.port, bodies, hostile)
        livez = LivezProbe(server.port)
        asyncio.run(unloaded.run(baseline, healthy, 0))
        livez_unloaded = livez.stop()

        print(f"soak: {healthy} healthy and {args.hostile} hostile clients for "
              f"{soak / 60:g} min", flush=True)  # fmt: skip
        curve: list[tuple[float, dict[int, float]]] = []  # (seconds, pid -> MB)
        begun = time.monotonic()
        next_sample = [begun]

        def sample() -> None:
            now = time.monotonic()
            if now >= next_sample[0]:
                curve.append((now - begun, {pid: rss_mb(pid) for pid in server.tree()}))
                print(f"  {now - begun:6.0f} s  RSS {sum(curve[-1][1].values()):7.1f} MB "
                      f"({len(curve[-1][1])} processes)", flush=True)  # fmt: skip
                next_sample[0] += args.sample_seconds

        loaded = Load(server.port, bodies, hostile)
        livez = LivezProbe(server.port)
        sample()
        asyncio.run(loaded.run(soak, healthy, args.hostile, sample))
        sample()
        livez_seconds = livez.stop()
        metrics = request(server.port, b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n").decode()
        ending_workers = workers_of(server)

        # SIGTERM while clients still come
        stopping = Load(server.port, bodies, hostile)

        async def stop_under_load() -> tuple[float, int | None]:
            tasks = asyncio.ensure_future(stopping.run(args.shutdown_timeout + 10, 8, 4))
            await asyncio.sleep(1.0)
            server.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            while server.process.poll() is None and time.monotonic() - sent < 60:
                await asyncio.sleep(0.05)
            took = time.monotonic() - sent
            stopping.stop.set()
            await tasks
            return took, server.process.poll()

        stop_seconds, code = asyncio.run(stop_under_load())
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    unloaded_p99 = percentile(unloaded.latencies, 0.99)
    soak_p99 = percentile(loaded.latencies, 0.99)
    early, late = memory_growth(curve)
    statuses_500 = sum(n for s, n in loaded.healthy.items() if str(s).startswith("5"))
    statuses_500 += sum(n for (_, s), n in loaded.hostile.items() if s.split()[-1][0] == "5")
    metric_500 = sum(
        int(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dynroute_requests_total") and 'status="5' in line
    )
    restarts = next(
        int(line.split()[1]) for line in metrics.splitlines()
        if line.startswith("dynroute_worker_restarts_total")
    )  # fmt: skip
    deadline = args.shutdown_timeout + DRAIN_GRACE
    checks = {
        "no crash": set(ending_workers) == set(started_workers) and restarts == 0,
        "no 5xx": statuses_500 == 0 and metric_500 == 0,
        "flat memory": late <= (1 + MEMORY_GROWTH) * early,
        f"healthy p99 within {P99_FACTOR:g}x unloaded": soak_p99 <= P99_FACTOR * unloaded_p99,
        "SIGTERM: exit 0 within the drain deadline": code == 0 and stop_seconds <= deadline,
    }
    results = {
        "machine": {"platform": platform.platform(), "cores": len(os.sched_getaffinity(0))},
        "model": args.model,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "hostile_clients": args.hostile,
        "minutes": args.minutes,
        "unloaded": {
            "requests": len(unloaded.latencies),
            "p50_ms": 1000 * percentile(unloaded.latencies, 0.5),
            "p99_ms": 1000 * unloaded_p99,
            "statuses": {str(k): v for k, v in unloaded.healthy.items()},
            "livez_slowest_ms": 1000 * max(livez_unloaded, default=float("nan")),
            "livez_p99_ms": 1000 * percentile(livez_unloaded, 0.99),
        },
        "soak": {
            "healthy_requests": len(loaded.latencies),
            "healthy_per_s": len(loaded.latencies) / soak,
            "p50_ms": 1000 * percentile(loaded.latencies, 0.5),
            "p99_ms": 1000 * soak_p99,
            "healthy_statuses": {str(k): v for k, v in loaded.healthy.items()},
            "hostile_outcomes": {f"{k} {s}": v for (k, s), v in sorted(loaded.hostile.items())},
            "livez_slowest_ms": 1000 * max(livez_seconds, default=float("nan")),
            "livez_p99_ms": 1000 * percentile(livez_seconds, 0.99),
            "livez_probes": len(livez_seconds),
            "server_5xx_in_metrics": metric_500,
            "worker_restarts": restarts,
        },
        "rss_curve": [
            {"s": round(t, 1), "rss_mb": round(sum(mbs.values()), 1), "processes": len(mbs)}
            for t, mbs in curve
        ],
        "rss_mb_by_process_first_last": {
            str(pid): [round(curve[0][1].get(pid, 0.0), 1), round(mb, 1)]
            for pid, mb in curve[-1][1].items()
        },
        "rss_mb_second_fifth": early,
        "rss_mb_last_fifth": late,
        "sigterm": {"exit_status": code, "seconds": stop_seconds, "deadline_s": deadline},
        "checks": checks,
    }
    print(
        f"unloaded: {results['unloaded']['requests']} requests, p50 "
        f"{results['unloaded']['p50_ms']:.1f} ms, p99 {results['unloaded']['p99_ms']:.1f} ms; "
        f"/livez p99 {results['unloaded']['livez_p99_ms']:.1f} ms, slowest "
        f"{results['unloaded']['livez_slowest_ms']:.1f} ms"
    )
    soaked = results["soak"]
    print(
        f"soak: {soaked['healthy_requests']} healthy requests ({soaked['healthy_per_s']:.0f}/s), "
        f"p50 {soaked['p50_ms']:.1f} ms, p99 {soaked['p99_ms']:.1f} ms; statuses "
        f"{soaked['healthy_statuses']}"
    )
    print(
        "hostile clients: " + ", ".join(f"{k}: {v}" for k, v in soaked["hostile_outcomes"].items())
    )
    print(
        f"/livez in the soak: {soaked['livez_probes']} probes, p99 {soaked['livez_p99_ms']:.1f} "
        f"ms, slowest {soaked['livez_slowest_ms']:.1f} ms (goal 100 ms)"
    )
    print(
        f"memory of the processes alive throughout: {early:.1f} MB over the soak's second "
        f"fifth, {late:.1f} MB over its last"
    )
    print(f"SIGTERM under load: exit {code} after {stop_seconds:.2f} s (deadline {deadline:g} s)")
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
