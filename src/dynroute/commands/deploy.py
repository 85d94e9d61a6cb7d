"""``dynroute predict``, ``dynroute export`` and ``dynroute serve``: use a trained network.

``predict`` classifies files (images, .npz/.npy arrays) with a run or an export and writes
one row per example; ``export`` writes a run as ONNX segments plus a manifest that
``dynroute.deploy`` runs without torch; ``serve`` answers HTTP requests with dynamic
batching. Given an export, ``predict`` and ``serve`` never import torch. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.core.operating import OperatingRequest
from dynroute.io.gate import table_cell

FORMATS = ("csv", "jsonl")


def _open(args: argparse.Namespace) -> Any:
    from dynroute.delivery.predict import open_predictor

    return open_predictor(
        args.model,
        **OperatingRequest.from_options(args).options(),
        threads=args.threads,
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
    )


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.out and Path(args.out).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` or ``--totals`` that would replace what it must not
    (``dynroute.delivery.predict.check_outputs``), then remove a stale totals file (it
    would describe another run)."""
    from dynroute.delivery.predict import check_outputs

    check_outputs(args.model, args.inputs, {"--out": args.out, "--totals": args.totals})
    if args.totals:
        Path(args.totals).unlink(missing_ok=True)


def _row_text(row: dict[str, Any], fmt: str) -> str:
    """One row as a whole line: CSV cells safe in a spreadsheet, or a JSON object."""
    from dynroute.delivery.predict import ROW_FIELDS

    if fmt == "jsonl":
        return json.dumps(row) + "\n"
    buffer = io.StringIO()
    cells = {k: table_cell(v) if isinstance(v, str) else v for k, v in row.items()}
    csv.DictWriter(buffer, ROW_FIELDS, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def cmd_predict(args: argparse.Namespace) -> int:
    from dynroute.data.files import batches, expand
    from dynroute.delivery.predict import ROW_FIELDS, Totals
    from dynroute.io.atomic import write_json_atomic

    _check_outputs(args)
    predictor = _open(args)
    size = predictor.image_size
    if size is None:
        raise DynrouteError(
            f"{args.model} reads inputs of shape {predictor.input_shape}, not RGB images; "
            "classify arrays with dynroute.deploy or the engine from Python"
        )
    print(f"dynroute: {predictor.describe()}", file=sys.stderr)
    totals = Totals(predictor.exit_names)
    fmt = _format(args)
    seen = 0
    with RowWriter(args.out) as out:
        if fmt == "csv":
            out.write(",".join(ROW_FIELDS) + "\n")
        from tqdm import tqdm

        bar = tqdm(
            unit="file",
            disable=True if args.no_progress else None,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        reading = batches(expand(args.inputs), size, args.batch_size, workers=args.readers)
        with contextlib.closing(reading), contextlib.closing(bar):
            for batch in reading:
                totals.failures.extend(batch.failures)
                if len(batch.names):
                    started = time.perf_counter()
                    prediction = predictor.predict(batch.images)
                    totals.add(prediction, time.perf_counter() - started)
                    out.write(
                        "".join(
                            _row_text(row, fmt) for row in predictor.rows(batch.names, prediction)
                        )
                    )
                seen += batch.files
                bar.update(batch.files)
    print(totals.format(), file=sys.stderr)
    if args.totals:
        write_json_atomic(args.totals, {"model": predictor.describe(), **totals.summary()})
    return 0 if totals.count or not seen else 1


class RowWriter:
    """Rows to stdout as they come, or to ``--out`` through a ``dynroute.io.atomic.AtomicFile``:
    streamed into a temporary file beside it and renamed into place at the end, so a full
    disk, an error or Ctrl-C leaves the previous file, or none, never half of one; a failure
    names the file."""

    def __init__(self, path: str | None) -> None:
        from dynroute.io.atomic import AtomicFile

        self.file = None if path is None else AtomicFile(path)

    def __enter__(self) -> RowWriter:
        if self.file is not None:
            self.file.__enter__()
        return self

    def write(self, text: str) -> None:
        if self.file is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            self.file.write(text.encode("utf-8"))

    def __exit__(self, *exc_info: Any) -> None:
        if self.file is not None:
            self.file.__exit__(*exc_info)


def cmd_export(args: argparse.Namespace) -> int:
    from dynroute.delivery.export import export_run

    manifest, how, check = export_run(
        args.run,
        args.out,
        **OperatingRequest.from_options(args).options(),
        dense=args.dense,
        force=args.force,
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
        check=args.check,
        operating_points=not args.no_operating_points,
        int8=args.int8,
    )
    from dynroute.core.decisions import path_macs
    from dynroute.core.policy import Policy
    from dynroute.deploy.manifest import shape

    policy = Policy.from_dict(manifest["policy"])
    setting = policy.label()
    count = len(manifest["segments"]) + len(manifest["heads"]) + len(manifest["routers"])
    print(
        f"exported {args.run} to {args.out}: {len(manifest['segments'])} segments, "
        f"{len(manifest['heads'])} exits, {len(manifest['routers'])} routers ({count} ONNX "
        f"models{', plus dense.onnx' if manifest['dense'] else ''}), opset "
        f"{manifest['onnx']['opset']}, batch norm folded"
    )
    print(f"  policy: {setting} ({how})")
    classes = manifest["model"]["num_classes"]
    table = path_macs(policy, shape(manifest), classes, manifest["costs"]["path_macs"])
    exits = ", ".join(f"{h['name']} {table[h['leaf']] / 1e6:.2f}M" for h in manifest["heads"])
    print(f"  MACs per exit: {exits}")
    points = (manifest.get("operating_points") or {}).get("points") or []
    if len(points) > 1:
        print(
            f"  {len(points)} operating points measured on the validation split "
            f"({min(p['mean_macs'] for p in points) / 1e6:.2f} to "
            f"{max(p['mean_macs'] for p in points) / 1e6:.2f} M): predict and serve take "
            "--target-macs"
        )
    elif manifest.get("operating_points") is not None:
        print(
            f"  one operating point only ({policy.describe()}): predict and serve cannot "
            "choose another budget; export with --policy and --target-macs for one that can"
        )
    if check is not None and args.int8:
        from dynroute.delivery.quantize import FASTER_BY
        from dynroute.platform.machine import INT8_FLAGS, native_int8

        record = manifest["source"].get("int8_models", {})
        kept = sorted(name for name, r in record.items() if r["precision"] == "int8")
        print(
            f"  int8 kept for {len(kept)} of {len(record)} models: those that ran at least "
            f"{FASTER_BY:g}x as fast as float32 on the calibration images here "
            "(the others stay float32; timings in the manifest's source.int8_models)"
        )
        if not native_int8():
            print(
                f"  this CPU has no int8 dot-product instructions ({', '.join(INT8_FLAGS)}): "
                "int8 seldom pays here; export on the kind of machine you deploy to"
            )
        print(
            f"  int8 against float32 on the test split ({check['examples']} images, each at "
            f"its own operating point): accuracy {100 * check['int8']['accuracy']:.2f} % "
            f"against {100 * check['float32']['accuracy']:.2f} % "
            f"({100 * check['accuracy_difference']:+.2f} points), mean MACs "
            f"{check['int8']['mean_macs'] / 1e6:.2f} M against "
            f"{check['float32']['mean_macs'] / 1e6:.2f} M, same class on "
            f"{100 * check['same_class']:.1f} %"
        )
    elif check is not None:
        print(
            f"  checked with onnxruntime on {check['examples']} random inputs: "
            f"{check['same_exits']}/{check['examples']} exits as PyTorch's dense reference, "
            f"largest logit difference {check['max_logit_difference']:.2g}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dynroute.core.errors import Interrupted
    from dynroute.delivery.serve import Limits, ServeApp, default_decode_threads, serve
    from dynroute.platform.machine import threads_per_worker

    if args.hold and args.target_macs is None:
        raise DynrouteError("--hold keeps a budget: give it with --target-macs")
    if args.threads is None:  # the workers share the cores rather than each taking them all
        args.threads = threads_per_worker(args.workers)
    limits = Limits(
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_queue=args.max_queue,
        decode_budget=args.decode_budget,
        decode_threads=args.decode_threads or default_decode_threads(args.workers),
        max_connections=args.max_connections or 0,
        header_timeout=args.header_timeout,
        request_timeout=args.request_timeout,
        idle_timeout=args.idle_timeout,
        shutdown_timeout=args.shutdown_timeout,
    )

    def make_app() -> Any:
        predictor = _open(args)
        hold = None
        if args.hold:
            from dynroute.deploy.budget import BudgetHold

            if predictor.kind != "export":
                raise DynrouteError("--hold runs an export (it moves among its operating points)")
            hold = BudgetHold(predictor.model, args.target_macs)
            predictor.backend = hold.predict
            predictor.how += "; held to the budget online (--hold)"
        if args.dense:
            if predictor.kind != "export" or not predictor.model.has_dense:
                raise DynrouteError("--dense serves an export's dense.onnx: export with --dense")
            predictor.backend = predictor.model.predict_dense
            predictor.how += "; every exit on every image (dense.onnx)"
        return ServeApp(
            predictor,
            batch_size=args.batch_size,
            max_wait_ms=args.max_wait_ms,
            limits=limits,
            access_log=args.access_log,
            hold=hold,
        )

    def ready(host: str, port: int, summary: str) -> None:
        """Said once every worker has loaded its model and serves, never before."""
        shown = f"[{host}]" if ":" in host else host
        print(f"dynroute: {summary}", flush=True)
        print(
            f"dynroute: serving on http://{shown}:{port} with {args.workers} worker(s) (POST "
            "/predict with an image as the body; GET /model, /health, /metrics); Ctrl-C or "
            "SIGTERM stops after in-flight requests",
            flush=True,
        )

    try:
        if args.workers == 1:  # open the model now: a bad option fails before listening
            app = make_app()
            factory = lambda: app  # noqa: E731
        else:  # each worker opens its own, after the fork
            factory = make_app
        serve(factory, args.host, args.port, workers=args.workers, limits=limits, on_ready=ready)
    except Interrupted as exc:  # SIGTERM (while starting or after the drain) is a normal stop
        if exc.signum != signal.SIGTERM:
            raise
    print("dynroute: stopped", flush=True)
    return 0


def _serve_range(name: str) -> Any:
    """The argparse type of ``serve`` option ``name``: its range on this machine
    (``dynroute.delivery.serve.limits``), read only when the option is given, so that other
    commands never import the server."""

    def parse(text: str) -> Any:
        from dynroute.commands.common import ranged
        from dynroute.delivery.serve.limits import ranges

        return ranged(ranges()[name])(text)

    return parse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_operating_point_arguments,
        add_threads_argument,
        batch_size,
        megabytes,
        ranged,
        seconds,
    )
    from dynroute.core import checks
    from dynroute.platform.machine import available_cores

    predict = sub.add_parser(
        "predict", help="classify image files and .npz arrays with a run or an export"
    )
    predict.add_argument("model", metavar="RUN_OR_EXPORT", help="run directory or export folder")
    predict.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_FOLDER", help="images, .npz/.npy files, folders"
    )
    add_operating_point_arguments(predict, "the run's calibration, or the export's")
    predict.add_argument("--batch-size", type=batch_size, default=64, help="images run at once")
    predict.add_argument("--format", choices=FORMATS, default=None, help="default: csv, or "
                         "jsonl when --out ends in .jsonl")  # fmt: skip
    predict.add_argument("--out", default=None, metavar="FILE", help="rows here, not stdout")
    predict.add_argument(
        "--totals", default=None, metavar="FILE", help="also write the totals as JSON here"
    )
    predict.add_argument(
        "--readers",
        type=ranged(checks.READERS),
        default=min(2, available_cores()),
        help="threads decoding files ahead (default: 2, or 1 on a single core)",
    )
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(predict)
    add_data_dir_argument(predict)
    add_checksum_argument(predict)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a run as ONNX segments for dynroute.deploy")
    export.add_argument("run", metavar="RUN", help="run directory")
    export.add_argument("--out", required=True, metavar="DIR", help="export folder to write")
    add_operating_point_arguments(export, "the run's calibration, else the learned routers")
    export.add_argument(
        "--dense", action="store_true", help="also write dense.onnx (every exit, for timing)"
    )
    export.add_argument("--force", action="store_true", help="replace an export at --out")
    export.add_argument(
        "--check",
        type=ranged(checks.CHECK_INPUTS),
        default=64,
        metavar="N",
        help="compare the export with PyTorch on N random inputs (0: skip)",
    )
    export.add_argument(
        "--int8",
        action="store_true",
        help="quantize the models to int8 (static, per-channel weights, calibrated on the "
        "validation split; each model only where int8 runs faster on this machine), re-fit "
        "the operating point on the int8 answers and check it "
        "against float32 on the test split; needs a validation split",
    )
    export.add_argument(
        "--no-operating-points",
        action="store_true",
        help="do not measure the policy's operating points on the validation split (then "
        "an export takes no --target-macs)",
    )
    add_data_dir_argument(export)
    add_checksum_argument(export)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="an HTTP endpoint classifying images, batched")
    serve.add_argument("model", metavar="EXPORT_OR_RUN", help="export folder or run directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port", type=_serve_range("port"), default=8000, help="0..65535; 0 picks a free port"
    )
    serve.add_argument("--batch-size", type=batch_size, default=32, help="largest batch, "
                       "for every kind of body (default 32)")  # fmt: skip
    serve.add_argument(
        "--max-wait-ms", type=_serve_range("max_wait_ms"), default=5.0, help="how long a "
        "batch waits for requests still arriving, 0..1000 (default 5)",
    )  # fmt: skip
    serve.add_argument(
        "--max-mb",
        dest="max_bytes",
        type=megabytes,
        default=10 << 20,
        metavar="MB",
        help="largest request body (default 10)",
    )
    serve.add_argument(
        "--max-pixels", type=_serve_range("max_pixels"), default=40_000_000,
        help="largest image accepted (default 40 million)",
    )  # fmt: skip
    serve.add_argument(
        "--max-images", type=_serve_range("max_images"), default=1024,
        help="most images in one array request, .npy or .npz (default 1024)",
    )  # fmt: skip
    serve.add_argument(
        "--max-queue", type=_serve_range("max_queue"), default=4096,
        help="most images waiting for the model; beyond, 503 (default 4096)",
    )  # fmt: skip
    serve.add_argument(
        "--workers", type=_serve_range("workers"), default=1, help="server processes, "
        "supervised (each loads its own model; at most 2 per core and what memory holds; "
        "default 1)"
    )  # fmt: skip
    serve.add_argument(
        "--hold", action="store_true", help="keep --target-macs on drifting inputs: move "
        "among the export's operating points to hold the mean MACs of the last images"
    )  # fmt: skip
    serve.add_argument("--access-log", action="store_true", help="one line per request")
    serve.add_argument(
        "--dense", action="store_true", help="run the export's single graph (dense.onnx: every "
        "exit on every image) instead of early exit: the baseline routing is timed against"
    )  # fmt: skip
    serve.add_argument(
        "--decode-budget-mb", dest="decode_budget", type=megabytes, default=512 << 20,
        metavar="MB", help="decoded pixels held at once, across requests (default 512)",
    )  # fmt: skip
    serve.add_argument(
        "--decode-threads", type=_serve_range("decode_threads"), default=None, help="threads "
        "decoding bodies in each worker (default: the worker's share of the cores, at least 2)"
    )  # fmt: skip
    serve.add_argument(
        "--max-connections", type=_serve_range("max_connections"), default=None,
        help="open connections in each worker (default 256, or what ulimit -n allows)",
    )  # fmt: skip
    serve.add_argument(
        "--header-timeout", type=seconds, default=10.0, help="seconds a connection has to send "
        "a request head (default 10)"
    )  # fmt: skip
    serve.add_argument(
        "--request-timeout", type=seconds, default=30.0, help="seconds for a request's body "
        "and answer (default 30)"
    )  # fmt: skip
    serve.add_argument(
        "--idle-timeout", type=seconds, default=5.0, help="seconds a kept-alive connection may "
        "idle (default 5)"
    )  # fmt: skip
    serve.add_argument(
        "--shutdown-timeout", type=seconds, default=10.0, help="seconds in-flight requests get "
        "on SIGTERM; what is left then gets 503 (default 10)"
    )  # fmt: skip
    add_operating_point_arguments(serve, "the run's calibration, or the export's")
    add_threads_argument(serve)
    add_data_dir_argument(serve)
    add_checksum_argument(serve)
    serve.set_defaults(func=cmd_serve)
