"""HTTP serving under load: images/s, latency, CPU per request and memory, on loopback.

Starts ``dynroute serve`` once per configuration (a routed export; a second export, e.g. a
static net of equal accuracy; the routed export's single graph, ``--dense``: every exit
on every image, behind the same HTTP front) and drives it with a bounded load generator:
``concurrency`` clients, each on one kept-alive connection, sending the same set of
encoded images in turn. Reports, per configuration and concurrency: images/s, p50 and p99
latency, the server's CPU seconds per request (from /proc) and its resident memory. The
client runs on the same machine, so numbers are for comparing configurations here.

    python benchmarks/bench_serve.py ROUTED_EXPORT [--baseline EXPORT] [--dense]
        [--images FOLDER] [--concurrency 1,8,32,64] [--requests 400] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from timing import save_results

REPO = Path(__file__).resolve().parents[1]


def _images(folder: str | None, count: int = 64) -> list[bytes]:
    """Encoded images to send: a folder's files, or random PNGs."""
    if folder:
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())[:count]
        return [p.read_bytes() for p in files]
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


class Server:
    def __init__(self, export: str, *options: str) -> None:
        args = ["serve", export, "--port", "0", "--threads", "1", *options]
        code = f"import sys\nfrom dynroute.cli import main\nsys.exit(main({args!r}))\n"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env,
        )  # fmt: skip
        self.port = None
        for line in self.process.stdout:
            found = re.search(r"serving on http://[^:]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        if self.port is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def _client(port: int, bodies: list[bytes], count: int, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for k in range(count):
            body = bodies[k % len(bodies)]
            head = (
                f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: image/png\r\n\r\n"
            )
            started = time.perf_counter()
            writer.write(head.encode() + body)
            await writer.drain()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


def drive(server: Server, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    per_client = max(1, requests // concurrency)

    async def main() -> None:
        await asyncio.gather(
            *(_client(server.port, bodies, per_client, latencies) for _ in range(concurrency))
        )

    cpu = server.cpu_seconds()
    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "images_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "server_cpu_ms_per_request": 1000 * cpu / len(latencies),
        "server_rss_mb": server.rss_mb(),
    }


def health_p50(server: Server, count: int = 200) -> float:
    """Median milliseconds of ``GET /health`` on one kept-alive connection."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", "/health")
        connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="the routed export")
    parser.add_argument("--baseline", default=None, help="another export (e.g. a static net)")
    parser.add_argument("--dense", action="store_true", help="also the routed export's dense.onnx")
    parser.add_argument("--images", default=None, help="a folder of images to send")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch-size", default="32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bodies = _images(args.images)
    configurations = [("routed", args.export, [])]
    if args.baseline:
        configurations.append(("baseline", args.baseline, []))
    if args.dense:
        configurations.append(("single graph", args.export, ["--dense"]))
    rows = []
    for name, export, options in configurations:
        server = Server(export, "--batch-size", args.batch_size, *options)
        try:
            drive(server, bodies, 4, 40)  # warm up
            health = health_p50(server)
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                row = {"server": name, "health_p50_ms": health,
                       **drive(server, bodies, concurrency, args.requests)}  # fmt: skip
                rows.append(row)
                print(
                    f"{name:<13} c={concurrency:<3} {row['images_per_s']:7.1f} img/s  "
                    f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                    f"cpu {row['server_cpu_ms_per_request']:5.2f} ms/req  "
                    f"rss {row['server_rss_mb']:6.1f} MB  /health p50 {health:.2f} ms",
                    flush=True,
                )
        finally:
            server.stop()
    from dynroute.devices import machine_description

    save_results({"machine": machine_description(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
