"""``dynroute predict``, ``dynroute export`` and ``dynroute serve``: use a trained network.

``predict`` classifies files (images, .npz/.npy arrays) with a run or an export and writes
one row per example; ``export`` writes a run as ONNX segments plus a manifest that
``dynroute.deploy`` runs without torch; ``serve`` answers HTTP requests with dynamic
batching. Given an export, ``predict`` and ``serve`` never import torch. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.gate import table_cell

FORMATS = ("csv", "jsonl")


def _open(args: argparse.Namespace) -> Any:
    from dynroute.delivery.predict import open_predictor

    target = None if args.target_macs is None else args.target_macs * 1e6
    return open_predictor(
        args.model,
        policy=args.policy,
        threshold=args.threshold,
        target_macs=target,
        k_cpt=args.k_cpt,
        threads=args.threads,
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
        answers=args.answers,
    )


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.out and Path(args.out).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _check_outputs(args: argparse.Namespace, files: list[Path]) -> None:
    """Refuse an ``--out`` or ``--totals`` that names an input file (it would be overwritten
    with rows before being read), and remove a stale totals file (it would describe another
    run)."""
    for option, name in (("--out", args.out), ("--totals", args.totals)):
        if name is None:
            continue
        target = Path(name)
        for path in files:
            try:
                same = target.exists() and os.path.samefile(target, path)
            except OSError:
                same = False
            if same:
                raise DynrouteError(f"{option} {target} is one of the inputs; write elsewhere")
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
    from dynroute.atomic import write_json_atomic
    from dynroute.data.files import batches, expand
    from dynroute.delivery.predict import ROW_FIELDS, Totals

    predictor = _open(args)
    size = predictor.image_size
    if size is None:
        raise DynrouteError(
            f"{args.model} reads inputs of shape {predictor.input_shape}, not RGB images; "
            "classify arrays with dynroute.deploy or the engine from Python"
        )
    files, missing = expand(args.inputs)
    _check_outputs(args, files)
    print(f"dynroute: {predictor.describe()}", file=sys.stderr)
    totals = Totals(predictor.exit_names)
    totals.failures.extend(missing)
    fmt = _format(args)
    with RowWriter(args.out) as out:
        if fmt == "csv":
            out.write(",".join(ROW_FIELDS) + "\n")
        from tqdm import tqdm

        bar = tqdm(
            total=len(files),
            unit="file",
            disable=True if args.no_progress else None,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for batch in batches(files, size, args.batch_size, workers=args.readers):
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
                bar.update(batch.files)
        finally:
            bar.close()
    print(totals.format(), file=sys.stderr)
    if args.totals:
        write_json_atomic(args.totals, {"model": predictor.describe(), **totals.summary()})
    return 0 if totals.count or not (files or missing) else 1


class RowWriter:
    """Rows to stdout as they come, or to ``--out`` written whole: into a temporary file
    beside it, renamed into place at the end (a full disk or Ctrl-C leaves the previous file,
    or none, never half a row), with the user's umask; a failure names the file."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else Path(path)
        self.handle: Any = None
        self.temporary: Path | None = None

    def __enter__(self) -> RowWriter:
        if self.path is not None:
            from dynroute.atomic import cannot_write, current_umask

            folder = self.path.parent
            try:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
                os.fchmod(fd, 0o666 & ~current_umask())
            except OSError as exc:
                raise cannot_write(self.path, exc, self.path.exists()) from None
            self.temporary = Path(name)
            self.handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        return self

    def write(self, text: str) -> None:
        if self.handle is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        try:
            self.handle.write(text)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        from dynroute.atomic import cannot_write

        assert self.path is not None and self.temporary is not None
        self.handle.close()
        self.temporary.unlink(missing_ok=True)
        self.handle = None
        raise cannot_write(self.path, exc, self.path.exists()) from None

    def __exit__(self, kind: Any, *exc_info: Any) -> None:
        if self.handle is None or self.temporary is None:
            return
        if kind is not None:
            self.handle.close()
            self.temporary.unlink(missing_ok=True)
            return
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temporary, self.path)
        except OSError as exc:
            self._fail(exc)


def cmd_export(args: argparse.Namespace) -> int:
    from dynroute.delivery.export import export_run

    target = None if args.target_macs is None else args.target_macs * 1e6
    manifest, how, check = export_run(
        args.run,
        args.out,
        policy=args.policy,
        threshold=args.threshold,
        target_macs=target,
        k_cpt=args.k_cpt,
        answers=args.answers,
        dense=args.dense,
        force=args.force,
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
        check=args.check,
        operating_points=not args.no_operating_points,
    )
    from dynroute.decisions import path_macs
    from dynroute.deploy.manifest import shape
    from dynroute.policy import Policy

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
    if check is not None:
        print(
            f"  checked with onnxruntime on {check['examples']} random inputs: "
            f"{check['same_exits']}/{check['examples']} exits as PyTorch's dense reference, "
            f"largest logit difference {check['max_logit_difference']:.2g}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dynroute.delivery.serve import Limits, ServeApp, serve
    from dynroute.errors import Interrupted

    if args.hold and args.target_macs is None:
        raise DynrouteError("--hold keeps a budget: give it with --target-macs")
    limits = Limits(
        max_bytes=args.max_bytes,
        max_pixels=args.max_pixels,
        decode_budget=args.decode_budget,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        request_timeout=args.request_timeout,
        idle_timeout=args.idle_timeout,
        shutdown_timeout=args.shutdown_timeout,
    )
    described: list[str] = []

    def make_app() -> Any:
        predictor = _open(args)
        hold = None
        if args.hold:
            from dynroute.deploy.budget import BudgetHold

            if predictor.kind != "export":
                raise DynrouteError("--hold runs an export (it moves among its operating points)")
            hold = BudgetHold(predictor.model, args.target_macs * 1e6)
            predictor.backend = hold.predict
            predictor.how += "; held to the budget online (--hold)"
        if args.dense:
            if predictor.kind != "export" or not predictor.model.has_dense:
                raise DynrouteError("--dense serves an export's dense.onnx: export with --dense")
            predictor.backend = predictor.model.predict_dense
            predictor.how += "; every exit on every image (dense.onnx)"
        described.append(predictor.describe())
        return ServeApp(
            predictor,
            batch_size=args.batch_size,
            max_wait_ms=args.max_wait_ms,
            limits=limits,
            access_log=args.access_log,
            hold=hold,
        )

    if args.workers <= 1:  # open the model now: a bad option fails before listening
        app = make_app()
        factory = lambda: app  # noqa: E731
    else:
        factory = make_app

    def ready(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        if described:
            print(f"dynroute: {described[0]}", flush=True)
        print(
            f"dynroute: serving on http://{shown}:{port} with {args.workers} worker(s) (POST "
            "/predict with an image as the body; GET /model, /health, /metrics); Ctrl-C or "
            "SIGTERM stops after in-flight requests",
            flush=True,
        )

    try:
        serve(factory, args.host, args.port, workers=args.workers, limits=limits, on_ready=ready)
    except Interrupted as exc:  # SIGTERM after a graceful drain is a normal stop
        if exc.signum != signal.SIGTERM:
            raise
    print("dynroute: stopped", flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_operating_point_arguments,
        add_threads_argument,
        batch_size,
        megabytes,
        positive_int,
        seconds,
    )

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
        "--readers", type=positive_int, default=2, help="threads decoding files ahead"
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
        type=int,
        default=64,
        metavar="N",
        help="compare the export with PyTorch on N random inputs (0: skip)",
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
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--batch-size", type=batch_size, default=32, help="largest batch")
    serve.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to batch with",
    )
    serve.add_argument(
        "--max-mb",
        dest="max_bytes",
        type=megabytes,
        default=10 << 20,
        metavar="MB",
        help="largest request body (default 10)",
    )
    serve.add_argument(
        "--max-pixels", type=positive_int, default=40_000_000, help="largest image accepted"
    )
    serve.add_argument(
        "--workers", type=positive_int, default=1, help="server processes (one per core: the "
        "model is loaded in each; default 1)"
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
    serve.add_argument("--max-connections", type=positive_int, default=256)
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
        "on SIGTERM (default 10)"
    )  # fmt: skip
    add_operating_point_arguments(serve, "the run's calibration, or the export's")
    add_threads_argument(serve)
    add_data_dir_argument(serve)
    add_checksum_argument(serve)
    serve.set_defaults(func=cmd_serve)
