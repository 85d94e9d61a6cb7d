"""An HTTP endpoint over a predictor (``dynroute serve``): dynamic batching, bounded work,
and what operators expect of a model server.

Built on Starlette (ASGI) and served by uvicorn, one process per core if asked
(``workers``: pre-forked, sharing one listening socket).

- ``POST /predict`` takes one image file as the body (any format Pillow reads; ``?name=``
  sets the ``file`` field), or several images at once as an ``.npy`` array (content type
  ``application/x-npy``: (N, 3, size, size) floats in [0, 1] or (N, size, size, 3) uint8,
  no decoding), and answers with the JSON row(s) ``dynroute predict`` writes: file, class,
  confidence, exit, MACs; ``?top=K`` adds the K most likely classes and their scores.
- ``GET /model``: what runs (policy, k_cpt, how it was chosen) and the guarantee its
  operating point holds with, if any; ``GET /health``, ``/livez`` (the process answers)
  and ``/readyz`` (the model is loaded and not draining); ``GET /metrics``: Prometheus
  text (requests by status, a latency histogram, exits taken, MACs, budget drift).

Work is bounded so that hostile or simply heavy clients cannot take the server down: a
body is refused by its declared length before it is read and read under a deadline;
images are decoded off the event loop by a small pool, each decode holding its pixels'
bytes of a memory budget (``decode_budget``) first; connections are capped, and one that
sends no complete request in ``header_timeout`` seconds (or idles past ``idle_timeout``) is
closed, each with one log line. Bad input gets a 4xx and a JSON ``{"error": ...}``. On
SIGTERM the server stops accepting, lets in-flight requests finish (``shutdown_timeout``),
answers the last ones with ``Connection: close``, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynroute.data.files import read_image_bytes
from dynroute.delivery.predict import Predictor
from dynroute.errors import DynrouteError
from dynroute.gate import npy_header
from dynroute.machine import available_cores

DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 4096
#: Latency buckets of ``/metrics`` (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LOG = logging.getLogger("dynroute.serve")


@dataclass(frozen=True)
class Limits:
    """What one server process allows (every option of ``dynroute serve`` that bounds work)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queue: int = DEFAULT_MAX_QUEUE
    decode_budget: int = 512 << 20  # bytes of decoded pixels held at once
    decode_threads: int = 0  # 0: one per available core
    max_connections: int = 256
    header_timeout: float = 10.0  # seconds for a connection to send a whole request head
    request_timeout: float = 30.0  # seconds for a request's body and its answer
    idle_timeout: float = 5.0  # seconds a kept-alive connection may idle
    shutdown_timeout: float = 10.0  # seconds in-flight requests get on SIGTERM


class ClientError(Exception):
    """A request the server refuses: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _starlette() -> Any:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DynrouteError(
            "serving needs starlette and uvicorn: pip install 'dynroute[serve]'"
        ) from None


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Counters behind ``/metrics`` (Prometheus text format, no dependency)."""

    def __init__(self, exit_names: dict[int, str]) -> None:
        self.exit_names = exit_names
        self.requests: Counter = Counter()  # (path, status) -> count
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.exits: Counter = Counter()
        self.macs = 0
        self.images = 0
        self.refused_connections = 0

    def request(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        index = next((k for k, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)
        self.latency[index] += 1
        self.latency_sum += seconds

    def prediction(self, exits: np.ndarray, macs: np.ndarray) -> None:
        self.exits.update(int(e) for e in exits)
        self.macs += int(macs.sum())
        self.images += len(exits)

    def render(self, extra: dict[str, float]) -> str:
        lines = [
            "# HELP dynroute_requests_total Requests answered, by path and status.",
            "# TYPE dynroute_requests_total counter",
        ]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'dynroute_requests_total{{path="{path}",status="{status}"}} {count}')
        lines += [
            "# HELP dynroute_request_seconds Request latency.",
            "# TYPE dynroute_request_seconds histogram",
        ]
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.latency, strict=True):
            total += count
            label = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'dynroute_request_seconds_bucket{{le="{label}"}} {total}')
        lines += [
            f"dynroute_request_seconds_sum {self.latency_sum:.6f}",
            f"dynroute_request_seconds_count {total}",
            "# HELP dynroute_exits_total Images classified at each exit.",
            "# TYPE dynroute_exits_total counter",
        ]
        for leaf, name in self.exit_names.items():
            lines.append(f'dynroute_exits_total{{exit="{name}"}} {self.exits.get(leaf, 0)}')
        lines += [
            "# TYPE dynroute_images_total counter",
            f"dynroute_images_total {self.images}",
            "# TYPE dynroute_macs_total counter",
            f"dynroute_macs_total {self.macs}",
            "# HELP dynroute_mean_macs Mean MACs per image since the start.",
            "# TYPE dynroute_mean_macs gauge",
            f"dynroute_mean_macs {self.macs / self.images if self.images else 0:.1f}",
            "# TYPE dynroute_refused_connections_total counter",
            f"dynroute_refused_connections_total {self.refused_connections}",
        ]
        for name, value in extra.items():
            lines += [f"# TYPE dynroute_{name} gauge", f"dynroute_{name} {value:.6g}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- decoding


class DecodeBudget:
    """Bytes of decoded pixels held at once, across concurrent requests: a decode waits
    until its share is free, and one that could never fit is refused."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        if amount > self.total:
            raise ClientError(413, f"decoding the image would take {amount:,} bytes, over the "
                                   f"server's budget of {self.total:,}")  # fmt: skip
        async with self.changed:
            await self.changed.wait_for(lambda: self.free >= amount)
            self.free -= amount
        try:
            yield
        finally:
            async with self.changed:
                self.free += amount
                self.changed.notify_all()


def _peek(body: bytes, max_pixels: int) -> int:
    """The bytes decoding ``body`` takes (width x height x bands x bytes per band, as
    Pillow holds it, doubled for the conversion), read from its header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
            bands = len(image.getbands())
            depth = 4 if image.mode in ("I", "F") else 2 if image.mode.startswith("I;16") else 1
    except UnidentifiedImageError:
        raise ClientError(400, "the body is not an image file Pillow can identify") from None
    except Image.DecompressionBombError:
        raise ClientError(413, "the image has too many pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ClientError(400, f"the body is not a readable image ({exc})") from None
    if width * height > max_pixels:
        raise ClientError(
            413, f"the image is {width}x{height} pixels, over the limit of {max_pixels:,}"
        )
    return 2 * width * height * max(3, bands) * depth


def _decode(body: bytes, name: str, size: int) -> np.ndarray:
    try:
        return read_image_bytes(body, name, size)
    except DynrouteError as exc:
        raise ClientError(400, str(exc)) from None


def _read_npy(body: bytes, size: int, max_values: int) -> np.ndarray:
    """An ``.npy`` body as (N, 3, size, size) float32, its header checked before reading."""
    handle = io.BytesIO(body)
    try:
        shape, _, declared = npy_header(handle)
        if declared > len(body):
            raise ValueError("the array declares more values than the body holds")
        if int(np.prod(shape, dtype=object)) > max_values:
            raise ValueError(f"more than {max_values:,} values")
        handle.seek(0)
        array = np.load(handle, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise ClientError(400, f"the body is not a readable .npy array ({exc})") from None
    if array.ndim == 4 and array.shape[1:] == (3, size, size) and array.dtype.kind == "f":
        images = array.astype(np.float32, copy=False)
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ClientError(400, "float images must hold intensities in [0, 1]")
        return np.ascontiguousarray(images)
    if array.ndim == 4 and array.shape[1:] == (size, size, 3) and array.dtype == np.uint8:
        from dynroute.data.datasets import to_linear

        return np.ascontiguousarray(to_linear(array.transpose(0, 3, 1, 2)))
    raise ClientError(
        400,
        f"an .npy body must be (N, 3, {size}, {size}) floats in [0, 1] or (N, {size}, {size}, "
        f"3) uint8; got {array.shape} {array.dtype}",
    )


# --------------------------------------------------------------------------- batching


class Batcher:
    """Collects decoded images into batches and runs them through the predictor."""

    def __init__(
        self, predictor: Predictor, batch_size: int, max_wait_ms: float, max_queue: int
    ) -> None:
        if batch_size < 1:
            raise DynrouteError(f"`batch_size` must be at least 1, got {batch_size}")
        if not 0 <= max_wait_ms <= 10_000:
            raise DynrouteError(f"`max_wait_ms` must be in [0, 10000], got {max_wait_ms}")
        self.predictor = predictor
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue(max_queue)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="dynroute-model")
        self.served = 0
        self.batches = 0
        self.task: asyncio.Task | None = None
        self.on_prediction: Callable[[Any], None] = lambda prediction: None
        #: Requests being read or decoded: worth waiting for (nothing else is).
        self.arriving = 0

    async def submit(self, images: np.ndarray) -> tuple[Any, int]:
        """(prediction, first row) of ``images`` (N, 3, size, size), once their batch ran."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((images, future))
        except asyncio.QueueFull:
            raise ClientError(503, "the server is overloaded; retry later") from None
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0 or not self.arriving:  # nobody else is on the way: run now
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                items.append(item)
                count += len(item[0])
            batch = np.concatenate([images for images, _ in items])
            try:
                prediction = await loop.run_in_executor(
                    self.model_thread, self.predictor.predict, batch
                )
            except Exception as exc:  # answer every waiting request, keep serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.served += count
            self.on_prediction(prediction)
            row = 0
            for images, future in items:
                if not future.done():
                    future.set_result((prediction, row))
                row += len(images)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.model_thread.shutdown(wait=False)


def _top(logits: np.ndarray, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p)[:k]
    return [{"class": names[i], "score": round(float(p[i]), 6)} for i in order]


# --------------------------------------------------------------------------- the app


def create_app(
    predictor: Predictor,
    *,
    batch_size: int = 32,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
    access_log: bool = False,
    hold: Any = None,
) -> Any:
    """The Starlette application serving ``predictor`` (see the module's docstring);
    ``hold``: a ``dynroute.deploy.budget.BudgetHold`` whose state ``/metrics`` reports."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    limits = limits or Limits()
    size = predictor.image_size
    if size is None:
        raise DynrouteError(
            f"{predictor.path} reads inputs of shape {predictor.input_shape}, not RGB images: "
            "it cannot be served over HTTP"
        )
    batcher = Batcher(predictor, batch_size, max_wait_ms, limits.max_queue)
    metrics = Metrics(predictor.exit_names)
    batcher.on_prediction = lambda p: metrics.prediction(p.exits, p.macs)
    decoders = ThreadPoolExecutor(
        limits.decode_threads or available_cores(), thread_name_prefix="dynroute-decode"
    )
    state = {"started": time.time(), "ready": False, "budget": None}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_bytes):
            raise ClientError(413, f"the body is {declared} bytes, over {limits.max_bytes:,}")
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/"):
            raise ClientError(
                415,
                "send the image file itself as the body (curl --data-binary @image.jpg), "
                "not a multipart form",
            )
        chunks, held = [], 0
        async for chunk in request.stream():
            held += len(chunk)
            if held > limits.max_bytes:
                raise ClientError(413, f"the body is over {limits.max_bytes:,} bytes")
            chunks.append(chunk)
        if not held:
            raise ClientError(400, "the body is empty; send one image file as the body")
        return b"".join(chunks)

    async def images_of(
        request: Request, body: bytes, name: str
    ) -> tuple[np.ndarray, list[str], bool]:
        """The body's images, their names, and whether it was one image file."""
        loop = asyncio.get_running_loop()
        kind = request.headers.get("content-type", "").lower()
        if kind.startswith("application/x-npy") or request.query_params.get("format") == "npy":
            images = await loop.run_in_executor(decoders, _read_npy, body, size, limits.max_bytes)
            return images, [f"{name}[{i}]" for i in range(len(images))], False
        needed = _peek(body, limits.max_pixels)
        async with state["budget"].hold(needed):
            image = await loop.run_in_executor(decoders, _decode, body, name, size)
        return image[None], [name], True

    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        status, answer = 200, None
        try:
            async with asyncio.timeout(limits.request_timeout):
                body = await read_body(request)
                name = request.query_params.get("name", "request")
                top = request.query_params.get("top")
                k = 0 if top is None else int(top) if top.isdigit() else -1
                if not 0 <= k <= len(predictor.class_names):
                    raise ClientError(400, f"`top` must be 0..{len(predictor.class_names)}")
                batcher.arriving += 1
                try:
                    images, names, single = await images_of(request, body, name)
                finally:
                    batcher.arriving -= 1
                prediction, row = await batcher.submit(images)
            part = type(prediction)(
                prediction.logits[row : row + len(names)],
                prediction.exits[row : row + len(names)],
                prediction.macs[row : row + len(names)],
            )
            rows = predictor.rows(names, part)
            if k:
                for out, logits in zip(rows, part.logits, strict=True):
                    out["top"] = _top(logits, predictor.class_names, k)
            answer = rows[0] if single else rows
        except ClientError as exc:
            status, answer = exc.status, {"error": str(exc)}
        except TimeoutError:
            status, answer = 408, {"error": "the request took too long to arrive"}
        except ClientDisconnect:
            status = 499  # the client went away: nothing to answer
        except DynrouteError as exc:
            status, answer = 500, {"error": str(exc)}
        seconds = time.perf_counter() - started
        metrics.request("/predict", status, seconds)
        if access_log:
            client = request.client.host if request.client else "-"
            print(f"{client} POST /predict {status} {1000 * seconds:.1f} ms", flush=True)
        elif status >= 400 and status != 499:
            LOG.info("refused a request from %s: %s %s", request.client, status, answer)
        return JSONResponse(answer, status_code=200 if status == 499 else status)

    def describe() -> dict[str, Any]:
        return {
            "model": str(predictor.path),
            "kind": predictor.kind,
            "policy": predictor.policy,
            "k_cpt": predictor.k_cpt,
            "chosen": predictor.how,
            "guarantee": predictor.guarantee,
            "classes": list(predictor.class_names),
            "exits": list(predictor.exit_names.values()),
            "hold": None if hold is None else hold.state(),
        }

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(describe())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok" if state["ready"] else "starting",
                "model": str(predictor.path),
                "kind": predictor.kind,
                "policy": predictor.policy["name"],
                "guarantee": (predictor.guarantee or {}).get("promise"),
                "classes": list(predictor.class_names),
                "image_size": size,
                "batch_size": batch_size,
                "max_wait_ms": max_wait_ms,
                "max_bytes": limits.max_bytes,
                "queued": batcher.queue.qsize(),
                "served": batcher.served,
                "batches": batcher.batches,
                "uptime_s": round(time.time() - state["started"], 1),
            }
        )

    async def livez(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> JSONResponse:
        ready = state["ready"]
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metrics_page(request: Request) -> PlainTextResponse:
        extra = {
            "queued": batcher.queue.qsize(),
            "decode_budget_free_bytes": state["budget"].free if state["budget"] else 0,
        }
        if hold is not None:
            held = hold.state()
            extra.update(
                budget_target_macs=held["target_macs"],
                budget_window_mean_macs=held["window_mean_macs"] or 0.0,
                budget_drift_ratio=held["drift_ratio"],
                budget_point_macs=held["point_validation_macs"],
                budget_moves=held["moves"],
            )
        return PlainTextResponse(metrics.render(extra), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        state["budget"] = DecodeBudget(limits.decode_budget)
        batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()
            decoders.shutdown(wait=False)

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.ready = state
    return app


# --------------------------------------------------------------------------- the server


def _guarded_protocol(limits: Limits, metrics: Metrics | None) -> type:
    """uvicorn's HTTP/1.1 protocol with deadlines and a connection cap: a connection that
    sends no complete request head within ``header_timeout`` (a slow or idle client), or
    whose request is not answered within ``request_timeout``, is closed; beyond
    ``max_connections`` a new one is closed at once. Each closes with one log line."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, why: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, why)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, why: str) -> None:
            if not self.transport.is_closing():
                LOG.warning("closed a connection from %s: %s", self.client, why)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                if metrics is not None:
                    metrics.refused_connections += 1
                LOG.warning(
                    "refused a connection from %s: %d open, the limit",
                    self.client,
                    limits.max_connections,
                )
                transport.close()
                return
            self._arm(limits.header_timeout, f"no request within {limits.header_timeout:g} s")

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not None and self.cycle is not cycle:  # a request head arrived
                self._arm(limits.request_timeout, f"no answer within {limits.request_timeout:g} s")

        def on_response_complete(self) -> None:
            self._disarm()
            super().on_response_complete()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm(
                    limits.header_timeout, f"no whole request within {limits.header_timeout:g} s"
                )
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound and listening: made with IPPROTO_TCP, so that every connection
    it accepts gets TCP_NODELAY (no Nagle wait on a kept-alive connection's answers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DynrouteError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)  # connections queue from here on, while uvicorn starts
    return sock


def run_app(app: Any, sock: socket.socket, limits: Limits) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until SIGTERM or SIGINT, draining in-flight
    requests for up to ``limits.shutdown_timeout`` seconds."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="dynroute: %(message)s", stream=sys.stderr)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=_guarded_protocol(limits, getattr(app.state, "metrics", None)),
        timeout_keep_alive=int(max(1, limits.idle_timeout)),
        timeout_graceful_shutdown=int(max(1, limits.shutdown_timeout)),
        h11_max_incomplete_event_size=64 << 10,
    )
    server = uvicorn.Server(config)
    with _quiet_disconnects():
        server.run(sockets=[sock])


@contextlib.contextmanager
def _quiet_disconnects() -> Any:
    """One line, not a traceback, for each client that disconnects mid-request."""

    class OneLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[0] is not None:
                name = record.exc_info[0].__name__
                if name in ("ClientDisconnect", "CancelledError", "ConnectionResetError"):
                    record.exc_info, record.exc_text = None, None
                    record.msg, record.args = f"a client went away mid-request ({name})", ()
            return True

    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn")]
    line = OneLine()
    for logger in loggers:
        logger.addFilter(line)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(line)


def serve(
    make_app: Callable[[], Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 1,
    limits: Limits | None = None,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve the app ``make_app()`` builds, in ``workers`` processes sharing one listening
    socket (each builds its own app after the fork, so each loads its own model); returns
    when stopped by SIGTERM or SIGINT, after in-flight requests finished."""
    limits = limits or Limits()
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    if workers <= 1:
        app = make_app()
        if on_ready is not None:
            on_ready(host, bound)
        run_app(app, sock, limits)
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: its own model, its own event loop
            code = 0
            try:
                run_app(make_app(), sock, limits)
            except BaseException:  # noqa: BLE001 - a worker reports and exits
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    if on_ready is not None:
        on_ready(host, bound)
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            while True:
                try:
                    os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
