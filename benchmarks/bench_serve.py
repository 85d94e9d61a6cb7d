"""HTTP serving under load: images/s, latency, CPU per request and memory, on loopback.

Exports a run at its operating point, and the static net of the same test accuracy
(``deployed.export_pair``), then starts ``dynroute serve`` once per configuration:

- *routed*: the export, with real early exit;
- *static*: the static net of equal accuracy;
- *single graph*: the routed export's ``dense.onnx`` (``serve --dense``: every exit on
  every image, one onnxruntime graph) behind the same HTTP front;

and drives each with a bounded load generator: ``concurrency`` clients, each on one
kept-alive connection, sending PNGs of the run's test images in turn (or, with
``--images-per-request N``, ``.npy`` arrays of N images: no decoding, and the HTTP cost
shared by N images). The three servers run side by side and take turns, ``--http-rounds``
times per concurrency (a machine's speed drifts); the round of median images/s is reported:
images/s, p50 and p99 latency, the server's CPU milliseconds per image (from /proc) and its
resident memory; ``GET /health`` p50 on a kept-alive connection. For reference, the same
models in process at the server's batch size: the routed/static speed-up HTTP should keep.
The client runs on the same machine (its requests built once, so that it costs the shared
cores little), so the numbers compare configurations here.

    python benchmarks/bench_serve.py RUN [--static-results results/cpu/hybrid-static]
        [--static NAME] [--concurrency 1,8,32,64] [--requests 800]
        [--images-per-request N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


class Server:
    """``dynroute serve`` in a subprocess on a free port (``--threads 1`` unless given)."""

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
        return rss_mb(self.process.pid)

    def tree(self) -> list[int]:
        """The server's process and its descendants (workers, decoding processes)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat[1])
        found = [self.process.pid]
        for pid in found:
            found += [child for child, parent in parents.items() if parent == pid]
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def npy_bytes(images: np.ndarray) -> bytes:
    """(N, 3, size, size) floats as an ``.npy`` body: the server's no-decoding path."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images, dtype=np.float32))
    return buffer.getvalue()


async def _client(port: int, requests: list[bytes], count: int, latencies: list[float]) -> None:
    """One kept-alive connection sending ``count`` of ``requests`` (whole HTTP requests,
    built once: the generator should cost the shared cores little)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for k in range(count):
            started = time.perf_counter()
            await exchange(reader, writer, requests[k % len(requests)])
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes):
    """Send one whole HTTP request on a kept-alive connection; its status and body."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    at = head.lower().index(b"content-length:") + 15
    body = await reader.readexactly(int(head[at : head.index(b"\r\n", at)]))
    return int(head[9:12]), body


def drive(
    server: Server, bodies: list[bytes], concurrency: int, requests: int, images: int = 1
) -> dict:
    """``requests`` requests from ``concurrency`` clients; ``images`` per body (1: PNG)."""
    latencies: list[float] = []
    per_client = max(1, requests // concurrency)
    kind = "image/png" if images == 1 else "application/x-npy"
    messages = [
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: {kind}\r\n\r\n".encode()
        + body
        for body in bodies
    ]

    async def main() -> None:
        await asyncio.gather(
            *(_client(server.port, messages, per_client, latencies) for _ in range(concurrency))
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
        "images_per_request": images,
        "images_per_s": images * len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "server_cpu_ms_per_request": 1000 * cpu / len(latencies),
        "server_cpu_ms_per_image": 1000 * cpu / (images * len(latencies)),
        "server_rss_mb": server.rss_mb(),
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median images/s among rounds (its latencies and CPU with it)."""
    ordered = sorted(runs, key=lambda run: run["images_per_s"])
    return {**ordered[len(ordered) // 2], "rounds": len(runs),
            "images_per_s_rounds": [run["images_per_s"] for run in runs]}  # fmt: skip


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
    parser.add_argument("run", help="run directory (calibrated, or learned routers)")
    parser.add_argument("--static-results", default="results/cpu/hybrid-static", type=Path)
    parser.add_argument("--static", default=None, help="static model name (skip the choice)")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=3200, help="per concurrency and round")
    parser.add_argument(
        "--http-rounds", type=int, default=3,
        help="rounds over HTTP, the configurations interleaved; the median is reported",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="the servers' largest batch")
    parser.add_argument(
        "--images-per-request", type=int, default=1,
        help="1: one PNG per request (decoded); N > 1: .npy arrays of N images",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from deployed import export_pair, png_bytes, test_sample, throughput
    from dynroute.platform.devices import configure_cpu, machine_description
    from timing import save_results

    configure_cpu(1)
    x, _ = test_sample(args.run)
    per = args.images_per_request
    if per == 1:
        bodies = [png_bytes(image) for image in x[:256]]
    else:
        bodies = [npy_bytes(x[k : k + per]) for k in range(0, len(x) - per + 1, per)]
    with tempfile.TemporaryDirectory() as temporary:
        pair = export_pair(args.run, Path(temporary), args.static_results, args.static)
        routed, static = pair["routed"], pair["static"]
        macs = {
            "routed": float(routed.predict(x).macs.mean()),
            "static": float(static.path_macs()["exit"]),
            "single graph": float(pair["manifest"]["dense"]["macs"]),
        }
        seconds = throughput(
            {"routed": routed.predict, "static": static.predict,
             "single graph": routed.predict_dense},
            x, args.rounds, args.batch_size,
        )  # fmt: skip
        in_process = {
            name: statistics.median(len(x) / s for s in times) for name, times in seconds.items()
        }
        print(
            f"{args.run}: {pair['how']}, test accuracy {pair['test_accuracy']:.4f} at "
            f"{macs['routed'] / 1e6:.2f} M MACs; static: {pair['static_name']} at "
            f"{macs['static'] / 1e6:.2f} M; in process, batch {args.batch_size}: "
            + ", ".join(f"{k} {v:.0f} img/s" for k, v in in_process.items()),
            flush=True,
        )
        configurations = [
            ("routed", pair["routed_dir"], []),
            ("static", pair["static_dir"], []),
            ("single graph", pair["routed_dir"], ["--dense"]),
        ]
        servers = {}
        try:
            for name, export, options in configurations:  # all up at once, idle when not driven
                servers[name] = Server(str(export), "--batch-size", str(args.batch_size), *options)
                drive(servers[name], bodies, 4, 40, per)  # warm up
            health = {name: health_p50(server) for name, server in servers.items()}
            rows = []
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                measured: dict[str, list[dict]] = {name: [] for name in servers}
                for _ in range(args.http_rounds):  # configurations interleaved in each round
                    for name, server in servers.items():
                        measured[name].append(
                            drive(server, bodies, concurrency, args.requests, per)
                        )
                for name, runs in measured.items():
                    row = {"server": name, "macs": macs[name], "health_p50_ms": health[name],
                           **median_run(runs)}  # fmt: skip
                    rows.append(row)
                    print(
                        f"{name:<13} c={concurrency:<3} {row['images_per_s']:7.1f} img/s  "
                        f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                        f"cpu {row['server_cpu_ms_per_image']:5.3f} ms/img  "
                        f"rss {row['server_rss_mb']:6.1f} MB  /health p50 {health[name]:.2f} ms",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
    rate = {(r["server"], r["concurrency"]): r["images_per_s"] for r in rows}
    kept = {}
    in_process_speedup = in_process["routed"] / in_process["static"]
    for concurrency in sorted({r["concurrency"] for r in rows}):
        over_http = rate[("routed", concurrency)] / rate[("static", concurrency)]
        kept[concurrency] = over_http / in_process_speedup
        print(
            f"c={concurrency}: routed/static over HTTP {over_http:.2f}x; in process "
            f"{in_process_speedup:.2f}x (batch {args.batch_size}): {kept[concurrency]:.2f} of it"
        )
    save_results(
        {
            "machine": machine_description(),
            "run": str(args.run),
            "operating_point": pair["how"],
            "test_accuracy": pair["test_accuracy"],
            "static": pair["static_name"],
            "macs": macs,
            "batch_size": args.batch_size,
            "images_per_request": per,
            "in_process_images_per_s": in_process,
            "in_process_speedup": in_process_speedup,
            "http_share_of_in_process_speedup": kept,
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
