"""Deployed speed: a run exported to ONNX and run by ``dynroute.deploy`` with real early exit,
against the same net as one dense graph and against the static net of the same accuracy.

For the run at its calibrated operating point (``dynroute calibrate``), on a seeded sample
of 2,048 of its test images:

- (a) *routed*: the export in ``dynroute.deploy`` (split batches, each part through its own
  path's segments);
- (b) *dense*: ``dense.onnx``, the same net as one graph computing every exit, then the same
  decisions (what exporters that "support early exit" ship);
- (c) *static*: the cheapest static network of the chain (``static-N``) at least as accurate
  on the test split as the routed net there, by the sweep results in ``--static-results``
  (built from the registry: its weights do not change its speed), exported the same way.

and, for reference, *engine*: the run in dynroute's PyTorch early-exit engine (batch norm
folded, channels-last), timed after the others, not interleaved with them (torch between
onnxruntime calls slows those).

Reported: throughput at batch 256 (median over interleaved rounds; speed-ups are medians of
per-round ratios), latency at batch 1 (p50, p99 over single images, interleaved), the MAC
ratio and the *ideal* routed speed-up (each model's time at batch 256, weighted by the share
of examples that reach it: what routing costs nothing would give). Then ``dynroute serve``
on the export under concurrent clients (requests/s, p50/p99), with dynamic batching and
without (batch size 1).

Run: python benchmarks/bench_deploy.py RUN [--static-results results/cpu/hybrid-static]
     [--threads 1] [--rounds 5] [--singles 400] [--clients 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynroute.delivery.export import export_run, export_tree
from dynroute.deploy import load
from dynroute.devices import configure_cpu, machine_description
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.models import build_model
from dynroute.runs import open_run
from timing import save_results

SAMPLE = 2048
BATCH = 256


def pick_static(folder: Path, accuracy: float) -> tuple[str, float, float]:
    """(name, test accuracy, MACs) of the cheapest static net at least as accurate as
    ``accuracy`` in a sweep's result files (the most accurate one if none is)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        found.append((data["network"], data["accuracy"], data["mean_macs"]))
    if not found:
        raise SystemExit(f"no sweep results in {folder}")
    good = [f for f in found if f[1] >= accuracy]
    return min(good, key=lambda f: f[2]) if good else max(found, key=lambda f: f[1])


def throughput(models: dict, x: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Seconds per pass over ``x`` in batches of 256, interleaved over rounds."""
    for predict in models.values():
        predict(x[:BATCH])
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, predict in models.items():
            start = time.perf_counter()
            for i in range(0, len(x), BATCH):
                predict(x[i : i + BATCH])
            seconds[name].append(time.perf_counter() - start)
    return seconds


def latency(models: dict, x: np.ndarray, count: int) -> dict[str, list[float]]:
    """Milliseconds per single example, the models taking turns on each one."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(count):
        for name, predict in models.items():
            start = time.perf_counter()
            predict(x[i : i + 1])
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def ideal_speedup(model, static, x: np.ndarray) -> float:
    """Static time over the routed time if routing, splitting and gathering were free:
    every model's time at batch 256, weighted by the share of examples that run it."""

    def timed(call, *args) -> float:
        call(*args)
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            call(*args)
            runs.append(time.perf_counter() - start)
        return min(runs)

    batch = x[:BATCH]
    prediction = model.predict(x)
    reached = np.zeros(len(model.nodes))
    for leaf in model.leaves:  # the share of examples whose path passes each node
        share = float((prediction.exits == leaf).mean())
        node = leaf
        while node >= 0:
            reached[node] += share
            node = model.nodes[node]["parent"]
    signal: dict[int, list] = {}  # every node's output on the whole batch (dense walk)
    total = 0.0
    order = [(0, [batch])]
    while order:
        index, parts = order.pop()
        if model.is_leaf[index]:
            head = model._heads[index]
            total += reached[index] * timed(head, parts)
            continue
        segment, end = model._segments[index]
        total += reached[index] * timed(segment, parts)
        out = segment(parts)
        signal[end] = out
        if end in model._routers and model._runs_router[end]:
            total += reached[end] * timed(model._routers[end], out, None)
        children = model.children[end]
        if len(children) > 1 and model._uses_threshold:  # heads evaluated at the junction
            for child in children:
                if model.is_leaf[child]:
                    total += reached[end] * timed(model._heads[child], out)
            order += [(c, out) for c in children if not model.is_leaf[c]]
        else:
            order += [(c, out) for c in children]
    return timed(static.predict, batch) / total


def png_bytes(image: np.ndarray) -> bytes:
    """A linear-intensity (3, H, W) image as the 8-bit PNG it was decoded from."""
    pixels = np.clip(np.round(image.transpose(1, 2, 0) ** (1 / 2.2) * 255), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def serve_load(export: Path, bodies: list[bytes], clients: int, requests: int, options: list):
    """Start ``dynroute serve`` and send ``requests`` images from ``clients`` threads."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "dynroute.cli", "serve", str(export), "--port", "0",
               *options]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)  # fmt: skip
    try:
        lines: queue.Queue = queue.Queue()
        stdout = process.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            try:
                found = re.search(r"serving on (http://\S+) ", lines.get(timeout=1.0))
            except queue.Empty:
                continue
            url = found.group(1) if found else None
        if url is None:
            raise SystemExit("the server did not start")

        def one(i: int) -> float:
            start = time.perf_counter()
            request = urllib.request.Request(f"{url}/predict", data=bodies[i % len(bodies)])
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            return (time.perf_counter() - start) * 1000

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(2 * clients)))  # warm-up
            start = time.perf_counter()
            times = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - start
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            health = json.loads(response.read())
        return {
            "requests_per_second": requests / wall,
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
            "mean_batch": health["served"] / max(1, health["batches"]),
        }
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (calibrated, or learned routers)")
    parser.add_argument("--static-results", default="results/cpu/hybrid-static", type=Path)
    parser.add_argument("--static", default=None, help="static model name (skip the choice)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=400, help="batch-1 examples")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    configure_cpu(args.threads)

    run = open_run(args.run)
    images, labels, _ = run.split("test")
    rng = np.random.default_rng(0)  # the test split is ordered (digits first): sample it
    sample = np.sort(rng.choice(len(images), min(SAMPLE, len(images)), replace=False))
    x = np.array(images[sample])[rng.permutation(len(sample))]  # batches of mixed examples
    with tempfile.TemporaryDirectory() as temporary:
        routed_dir = Path(temporary) / "routed"
        manifest, how, _ = export_run(args.run, routed_dir, dense=True, check=0)
        routed = load(routed_dir, threads=args.threads)
        correct = 0
        for i in range(0, len(images), BATCH):
            batch = np.array(images[i : i + BATCH])
            correct += int((routed.predict(batch).predictions == labels[i : i + BATCH]).sum())
        accuracy = correct / len(images)
        if args.static:
            static_name, static_accuracy = args.static, None
        else:
            static_name, static_accuracy, _ = pick_static(args.static_results, accuracy)
        static_dir = Path(temporary) / "static"
        export_tree(build_model(static_name).eval(), static_dir)
        static = load(static_dir, threads=args.threads)

        routed_macs = float(routed.predict(x).macs.mean())
        static_macs = float(static.path_macs()["exit"])
        dense_macs = float(manifest["dense"]["macs"])
        engine = EarlyExitEngine.from_run(args.run, fold_batchnorm=True)

        def in_torch(batch: np.ndarray):
            with torch.inference_mode():
                return engine.predict(torch.from_numpy(batch))

        models = {"routed": routed.predict, "dense": routed.predict_dense,
                  "static": static.predict}  # fmt: skip
        seconds = throughput(models, x, args.rounds)
        singles = latency(models, x, min(args.singles, len(x)))
        ideal = ideal_speedup(routed, static, x)
        # torch in between the onnxruntime calls slows them (shared caches and allocator):
        # the engine is timed on its own, after them
        seconds.update(throughput({"engine": in_torch}, x, args.rounds))
        singles.update(latency({"engine": in_torch}, x, min(args.singles, len(x))))

        engine_macs = float(in_torch(x).macs.float().mean())
        results: dict = {
            "machine": {**machine_description(), "onnxruntime_threads": args.threads},
            "run": str(run.path),
            "operating_point": {"policy": manifest["policy"]["name"], "how": how},
            "test_accuracy": accuracy,
            "static": {"model": static_name, "test_accuracy_in_sweep": static_accuracy},
            "macs": {
                "routed": routed_macs,
                "dense": dense_macs,
                "static": static_macs,
                "engine": engine_macs,
            },
            "batch256_images_per_second": {
                k: statistics.median(len(x) / s for s in v) for k, v in seconds.items()
            },
            "batch1_ms": {
                k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                for k, v in singles.items()
            },
        }
        speedup = statistics.median(
            s / r for s, r in zip(seconds["static"], seconds["routed"], strict=True)
        )
        mac_ratio = static_macs / routed_macs
        results["batch256_speedup_vs_static"] = speedup
        results["mac_ratio_vs_static"] = mac_ratio
        results["wall_over_mac"] = speedup / mac_ratio
        results["ideal_speedup_vs_static"] = ideal
        results["batch256_speedup_vs_dense"] = statistics.median(
            d / r for d, r in zip(seconds["dense"], seconds["routed"], strict=True)
        )

        bodies = [png_bytes(image) for image in x[:256]]
        threads = ["--threads", str(args.threads)]
        results["serve"] = {
            "batched (--batch-size 32 --max-wait-ms 5)": serve_load(
                routed_dir, bodies, args.clients, args.requests, threads
            ),
            "unbatched (--batch-size 1)": serve_load(
                routed_dir, bodies, args.clients, args.requests, [*threads, "--batch-size", "1"]
            ),
        }
        results["serve_clients"] = args.clients

    print(f"{run.path} at {results['operating_point']['policy']} ({how}): test accuracy "
          f"{accuracy:.4f}, {routed_macs / 1e6:.2f} M MACs on the sample; static: {static_name} "
          f"({'' if static_accuracy is None else f'{static_accuracy:.4f}, '}"
          f"{static_macs / 1e6:.2f} M)")  # fmt: skip
    print(f"{'':8} {'MACs':>8} {'b256 img/s':>11} {'b1 p50 ms':>10} {'b1 p99 ms':>10}")
    for name in seconds:
        rate = results["batch256_images_per_second"][name]
        one = results["batch1_ms"][name]
        macs = results["macs"][name] / 1e6
        print(f"{name:8} {macs:7.2f}M {rate:11.0f} {one['p50']:10.3f} {one['p99']:10.3f}")
    print(f"batch 256: routed {speedup:.2f}x static for a MAC ratio of {mac_ratio:.2f} "
          f"(wall/MAC {speedup / mac_ratio:.2f}; ideal {ideal:.2f}x, "
          f"{ideal / mac_ratio:.2f} of the MAC ratio); "
          f"{results['batch256_speedup_vs_dense']:.2f}x the dense graph")  # fmt: skip
    for name, row in results["serve"].items():
        print(f"serve, {args.clients} clients, {name}: {row['requests_per_second']:.0f} req/s, "
              f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, mean batch "
              f"{row['mean_batch']:.1f}")  # fmt: skip
    save_results(results, args.json)


if __name__ == "__main__":
    main()
