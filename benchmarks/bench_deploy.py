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
of examples that reach it: what routing costs nothing would give). With ``--budgets``, the
same batch-256 comparison at other operating points of the export (chosen as
``--target-macs`` chooses), each against the static net of its own test accuracy. Serving
over HTTP is ``bench_serve.py``'s.

With ``--int8``, the int8 export of the run (``dynroute export --int8``) against the float32
one and against the static net of its test accuracy quantized the same way.

Run: python benchmarks/bench_deploy.py RUN [--static-results results/cpu/hybrid-static]
     [--threads 1] [--rounds 5] [--singles 400] [--budgets 4,6,8] [--int8] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deployed import (
    export_pair,
    export_static,
    pick_static,
    test_accuracy,
    test_sample,
    throughput,
)
from dynroute.deploy import load
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.platform.devices import configure_cpu, machine_description
from timing import save_results

BATCH = 256


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
        if len(children) > 1 and model.decider.reads_exits:  # heads evaluated at the junction
            for child in children:
                if model.is_leaf[child]:
                    total += reached[end] * timed(model._heads[child], out)
            order += [(c, out) for c in children if not model.is_leaf[c]]
        else:
            order += [(c, out) for c in children]
    return timed(static.predict, batch) / total


def budget_shares(routed, x: np.ndarray, args: argparse.Namespace, folder: Path) -> list[dict]:
    """The export at each of ``args.budgets`` (M MACs) against the static net of its test
    accuracy at batch 256: speed-up (median of per-round ratios), MAC ratio, their quotient
    (the share) and the ideal speed-up."""
    rows = []
    for budget in args.budgets:
        model, point = routed.for_budget(budget * 1e6)
        accuracy = test_accuracy(model, args.run)
        name, static_accuracy, _ = pick_static(args.static_results, accuracy)
        static = load(export_static(name, folder / name), threads=args.threads)
        macs, static_macs = float(model.predict(x).macs.mean()), static.path_macs()["exit"]
        seconds = throughput({"routed": model.predict, "static": static.predict}, x, args.rounds)
        ratios = [s / r for s, r in zip(seconds["static"], seconds["routed"], strict=True)]
        speedup, mac_ratio = statistics.median(ratios), static_macs / macs
        rows.append({
            "budget": budget * 1e6, "macs": macs, "test_accuracy": accuracy,
            "validation_mean_macs": point["mean_macs"], "static": name,
            "static_test_accuracy": static_accuracy, "static_macs": static_macs,
            "mac_ratio": mac_ratio, "speedup": speedup, "share": speedup / mac_ratio,
            "speedup_rounds": ratios, "ideal_speedup": ideal_speedup(model, static, x),
        })  # fmt: skip
    return rows


def int8_comparison(
    args: argparse.Namespace, pair: dict, x: np.ndarray, folder: Path, float32_macs: float
) -> dict:
    """The int8 routed export (its operating point re-fitted on int8 answers for the run's
    own target) against the float32 one and against the int8 static net of the same test
    accuracy, in interleaved rounds at batch 256 and in single images."""
    from dynroute.delivery.export import export_run, write_quantized

    _, how, check = export_run(args.run, folder / "routed-int8", int8=True, check=0)
    routed8 = load(folder / "routed-int8", threads=args.threads)
    accuracy8 = test_accuracy(routed8, args.run)
    static_name, _, _ = pick_static(args.static_results, accuracy8)
    static_dir = export_static(static_name, folder / "static-int8-source")
    write_quantized(static_dir, folder / "static-int8", x[:512])
    static8 = load(folder / "static-int8", threads=args.threads)
    models = {"routed": pair["routed"].predict, "routed int8": routed8.predict,
              "static int8": static8.predict}  # fmt: skip
    seconds = throughput(models, x, args.rounds)
    singles = latency(models, x, min(args.singles, len(x)))
    macs8 = float(routed8.predict(x).macs.mean())
    static_macs = float(static8.path_macs()["exit"])
    over_float = statistics.median(
        f / i for f, i in zip(seconds["routed"], seconds["routed int8"], strict=True)
    )
    over_static = statistics.median(
        s / i for s, i in zip(seconds["static int8"], seconds["routed int8"], strict=True)
    )
    record = routed8.manifest["source"]["int8_models"]
    out = {
        "how": how,
        "models_in_int8": sum(r["precision"] == "int8" for r in record.values()),
        "models": len(record),
        "check_on_test": check,
        "test_accuracy": {"float32": pair["test_accuracy"], "int8": accuracy8},
        "macs": {"float32": float32_macs, "int8": macs8, "static int8": static_macs},
        "static": static_name,
        "batch256_int8_over_float32": over_float,
        "batch256_int8_over_static_int8": over_static,
        "mac_ratio_vs_static_int8": static_macs / macs8,
        "share_of_mac_ratio": over_static / (static_macs / macs8),
        "batch1_ms": {
            k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
            for k, v in singles.items()
        },
    }
    one = out["batch1_ms"]
    print(
        f"int8 ({how}): test accuracy {100 * accuracy8:.2f} % against float32's "
        f"{100 * pair['test_accuracy']:.2f} % ({100 * (accuracy8 - pair['test_accuracy']):+.2f} "
        f"points; goal within 0.3), {macs8 / 1e6:.2f} M MACs against {float32_macs / 1e6:.2f} M"
    )
    print(
        f"batch 256: int8 routed {over_float:.2f}x the float32 routed export (goal 1.8); "
        f"{over_static:.2f}x {static_name} in int8 for a MAC ratio of "
        f"{static_macs / macs8:.2f} ({out['share_of_mac_ratio']:.2f} of it; goal 0.85); "
        f"{out['models_in_int8']} of {out['models']} models in int8"
    )
    print(
        "batch 1 p50/p99 ms: "
        + ", ".join(f"{k} {v['p50']:.3f}/{v['p99']:.3f}" for k, v in one.items())
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (calibrated, or learned routers)")
    parser.add_argument("--static-results", default="results/cpu/hybrid-static", type=Path)
    parser.add_argument("--static", default=None, help="static model name (skip the choice)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=400, help="batch-1 examples")
    parser.add_argument(
        "--budgets",
        default="",
        type=lambda text: [float(b) for b in text.split(",") if b],
        help="also compare at these budgets (M MACs, comma-separated), at batch 256",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also export int8 (routed: re-fitted on int8 answers; static: quantized the same "
        "way) and compare them with the float32 routed export in the same rounds",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    configure_cpu(args.threads)

    x, _ = test_sample(args.run)
    with tempfile.TemporaryDirectory() as temporary:
        pair = export_pair(
            args.run, Path(temporary), args.static_results, args.static, args.threads
        )
        routed, static, manifest, how = (pair[k] for k in ("routed", "static", "manifest", "how"))
        accuracy, static_name = pair["test_accuracy"], pair["static_name"]
        static_accuracy = pair["static_accuracy_in_sweep"]
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
            "run": str(args.run),
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
        if args.budgets:
            results["budgets"] = budget_shares(routed, x, args, Path(temporary) / "statics")
        if args.int8:
            results["int8"] = int8_comparison(args, pair, x, Path(temporary), routed_macs)

    print(f"{args.run} at {results['operating_point']['policy']} ({how}): test accuracy "
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
    if args.budgets:
        print("\nbatch 256 at other budgets, each against the static net of its test accuracy:")
        print(f"{'budget':>7} {'MACs':>7} {'accuracy':>8} {'static':>9} {'MAC ratio':>9} "
              f"{'speed-up':>8} {'share':>5} {'ideal':>5} {'rounds':>11}")  # fmt: skip
        for row in results["budgets"]:
            rounds = row["speedup_rounds"]
            print(f"{row['budget'] / 1e6:6.1f}M {row['macs'] / 1e6:6.2f}M "
                  f"{row['test_accuracy']:8.4f} {row['static']:>9} {row['mac_ratio']:9.2f} "
                  f"{row['speedup']:7.2f}x {row['share']:5.2f} "
                  f"{row['ideal_speedup'] / row['mac_ratio']:5.2f} "
                  f"{min(rounds):5.2f}-{max(rounds):.2f}")  # fmt: skip
    save_results(results, args.json)


if __name__ == "__main__":
    main()
