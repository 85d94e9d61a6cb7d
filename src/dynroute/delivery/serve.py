"""An HTTP endpoint over a predictor (``dynroute serve``): dynamic batching, bounded work,
and what operators expect of a model server.

A plain ASGI application served by uvicorn's httptools protocol (the HTTP parser in C),
one process per core if asked (``workers``: pre-forked, sharing one listening socket).

- ``POST /predict`` takes one image file as the body (any format Pillow reads; ``?name=``
  sets the ``file`` field), or several images at once as an ``.npy`` array (content type
  ``application/x-npy``: (N, 3, size, size) floats in [0, 1] or (N, size, size, 3) uint8,
  no decoding), and answers with the JSON row(s) ``dynroute predict`` writes: file, class,
  confidence, exit, MACs; ``?top=K`` adds the K most likely classes and their scores.
- ``GET /model``: what runs (policy, k_cpt, how it was chosen) and the guarantee its
  operating point holds with, if any; ``GET /health``, ``/livez`` (the process answers)
  and ``/readyz`` (the model is loaded and not draining); ``GET /metrics``: Prometheus
  text (requests by status, a latency histogram, exits taken, MACs, budget drift).

Where the time goes: a small image (up to 128 x 128) decodes on the event loop, in tens
of microseconds, and so does a batch the model finishes within 10 ms (timed on a warm-up
batch at start): under the GIL, handing such work to a thread costs more than it saves.
Larger images and slower models go to threads, so that the loop keeps answering.

Work is bounded so that hostile or simply heavy clients cannot take the server down: a
body is refused by its declared length before it is read and read under a deadline; a
request head is bounded (64 KB); large images are decoded by a small pool, each decode
holding its pixels' bytes of a memory budget (``decode_budget``) first; connections are
capped, and one that sends no complete request in ``header_timeout`` seconds (or idles
past ``idle_timeout``) is closed, each with one log line. Bad input gets a 4xx and a JSON
``{"error": ...}``. On SIGTERM the server stops accepting, lets in-flight requests finish
(``shutdown_timeout``), answers the last ones with ``Connection: close``, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
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
from urllib.parse import parse_qsl

import numpy as np

from dynroute.data.files import read_image_bytes
from dynroute.delivery.predict import Predictor
from dynroute.errors import DynrouteError
from dynroute.gate import npy_header, printable
from dynroute.machine import available_cores

DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 4096
#: The most bytes a request's head (its request line and headers) may take.
MAX_HEAD_BYTES = 64 << 10
#: Images whose file and decoding each hold at most this many bytes (128 x 128 RGB, as
#: ``_open_image`` counts) decode on the event loop: that takes tens of microseconds, less
#: than handing them to a thread (which would hold the GIL for most of it anyway); larger
#: ones go to the pool.
INLINE_DECODE_BYTES = 2 * 128 * 128 * 3
#: A batch the model should finish within this many seconds runs on the event loop; a
#: longer one runs in the model thread, so that the loop keeps answering meanwhile. A thread
#: costs a fast model dearly: under the GIL, each of a routed net's many onnxruntime calls
#: waits to take the GIL back from a busy event loop (up to the 5 ms switch interval).
INLINE_MODEL_SECONDS = 0.01
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


def _server_packages() -> None:
    try:
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DynrouteError(
            "serving needs uvicorn and httptools: pip install 'dynroute[serve]'"
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


def _open_image(body: bytes, max_pixels: int) -> tuple[Any, int]:
    """The body opened by Pillow (its header read, nothing decoded) and the bytes decoding it
    takes (width x height x bands x bytes per band, as Pillow holds it, doubled for the
    conversion)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(body))
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
        image.close()
        raise ClientError(
            413, f"the image is {width}x{height} pixels, over the limit of {max_pixels:,}"
        )
    return image, 2 * width * height * max(3, bands) * depth


def _decode(source: Any, name: str, size: int) -> np.ndarray:
    try:
        return read_image_bytes(source, name, size)
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
        #: Whether batches run on the event loop (``warm_up`` decides).
        self.inline = False
        self.batch_seconds = math.nan

    async def submit(self, images: np.ndarray) -> tuple[tuple[Any, list], int]:
        """((prediction, answer rows), first row) of ``images`` (N, 3, size, size), once
        their batch ran."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((images, future))
        except asyncio.QueueFull:
            raise ClientError(503, "the server is overloaded; retry later") from None
        return await future

    def _predict(self, batch: np.ndarray) -> tuple[Any, list[dict[str, Any]]]:
        """The batch's prediction and its answer rows (without file names): made once per
        batch, where the model runs, rather than once per request."""
        prediction = self.predictor.predict(batch)
        return prediction, self.predictor.rows(None, prediction)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            if self.max_wait > 0 and self.queue.empty():
                # Two turns of the loop: requests already at the sockets are read, parsed and
                # queued (a request decoded on the loop is never "arriving"), and join this
                # batch; tens of microseconds.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
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
                if self.inline:
                    prediction, table = self._predict(batch)
                else:
                    prediction, table = await loop.run_in_executor(
                        self.model_thread, self._predict, batch
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
                    future.set_result(((prediction, table), row))
                row += len(images)

    def warm_up(
        self, shape: tuple[int, ...], predict: Callable[[np.ndarray], Any] | None = None
    ) -> None:
        """Time a batch of noise (it tends to go deep: the slow case) through ``predict``
        (the predictor's, by default) and run batches on the event loop if a full one takes
        at most ``INLINE_MODEL_SECONDS``. Beyond 64 images the time is scaled from 64 (an
        estimate), so that a large batch size does not slow the start."""
        predict = predict or self.predictor.predict
        rows = min(self.batch_size, 64)
        noise = np.random.default_rng(0).random((rows, *shape), dtype=np.float32)
        predict(noise)  # first call: allocations
        started = time.perf_counter()
        predict(noise)
        self.batch_seconds = (time.perf_counter() - started) * self.batch_size / rows
        self.inline = self.batch_seconds <= INLINE_MODEL_SECONDS

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


class ClientDisconnect(Exception):
    """The client closed its connection before its request's body arrived."""


#: Answers to a path the server has, asked with another method; and to any other path.
_NOT_ALLOWED = (405, {"error": "Method Not Allowed"})
_NOT_FOUND = (404, {"error": "Not Found"})


def _json(answer: Any) -> bytes:
    return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class ServeApp:
    """The ASGI application serving ``predictor`` (see the module's docstring): a plain
    ASGI callable, no framework between the HTTP parser and the model (a request costs
    tens of microseconds here, not hundreds). ``hold``: a
    ``dynroute.deploy.budget.BudgetHold`` whose state ``/metrics`` reports."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        batch_size: int = 32,
        max_wait_ms: float = 5.0,
        limits: Limits | None = None,
        access_log: bool = False,
        hold: Any = None,
    ) -> None:
        _server_packages()
        self.predictor = predictor
        self.limits = limits or Limits()
        self.size = predictor.image_size
        if self.size is None:
            raise DynrouteError(
                f"{predictor.path} reads inputs of shape {predictor.input_shape}, not RGB "
                "images: it cannot be served over HTTP"
            )
        self.batch_size, self.max_wait_ms = batch_size, max_wait_ms
        self.access_log, self.hold = access_log, hold
        self.batcher = Batcher(predictor, batch_size, max_wait_ms, self.limits.max_queue)
        self.metrics = Metrics(predictor.exit_names)
        self.batcher.on_prediction = lambda p: self.metrics.prediction(p.exits, p.macs)
        self.decoders = ThreadPoolExecutor(
            self.limits.decode_threads or available_cores(), thread_name_prefix="dynroute-decode"
        )
        self.started = time.time()
        self.ready = False
        self.budget: DecodeBudget | None = None
        self.routes: dict[str, tuple[str, Callable[..., Any]]] = {
            "/predict": ("POST", self.predict),
            "/health": ("GET", self.health),
            "/livez": ("GET", self.livez),
            "/readyz": ("GET", self.readyz),
            "/model": ("GET", self.model),
            "/metrics": ("GET", self.metrics_page),
        }

    # ---------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, handler = self.routes.get(scope["path"], (None, None))
        if handler is None:
            status, answer = _NOT_FOUND
        elif scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
            status, answer = _NOT_ALLOWED
        else:
            status, answer = await handler(scope, receive)
        if isinstance(answer, str):
            body, kind = answer.encode(), b"text/plain; version=0.0.4; charset=utf-8"
        else:
            body, kind = _json(answer), b"application/json"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if status == 405:
            headers.append((b"allow", method.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.budget = DecodeBudget(self.limits.decode_budget)
                # a held budget's window counts served images only: warm its model directly
                direct = None if self.hold is None else self.hold.model.predict
                self.batcher.warm_up(tuple(self.predictor.input_shape), direct)
                self.batcher.start()
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.batcher.stop()
                self.decoders.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---------------------------------------------------------------- /predict

    async def read_body(self, headers: dict[bytes, bytes], receive: Callable) -> bytes:
        limit = self.limits.max_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ClientError(
                413, f"the body is {declared.decode('latin-1')} bytes, over {limit:,}"
            )
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/"):
            raise ClientError(
                415,
                "send the image file itself as the body (curl --data-binary @image.jpg), "
                "not a multipart form",
            )
        chunks, held, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            held += len(chunk)
            if held > limit:
                raise ClientError(413, f"the body is over {limit:,} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        if not held:
            raise ClientError(400, "the body is empty; send one image file as the body")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def images_of(
        self, body: bytes, name: str, npy: bool
    ) -> tuple[np.ndarray, list[str], bool]:
        """The body's images, their names, and whether it was one image file."""
        loop = asyncio.get_running_loop()
        size, limits = self.size, self.limits
        if npy:
            images = await loop.run_in_executor(
                self.decoders, _read_npy, body, size, limits.max_bytes
            )
            return images, [f"{name}[{i}]" for i in range(len(images))], False
        image, needed = _open_image(body, limits.max_pixels)
        if max(needed, len(body)) <= INLINE_DECODE_BYTES:  # less than a thread hop costs
            with image:
                return _decode(image, name, size)[None], [name], True
        image.close()
        assert self.budget is not None
        async with self.budget.hold(needed):
            image = await loop.run_in_executor(self.decoders, _decode, body, name, size)
        return image[None], [name], True

    async def predict(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        started = time.perf_counter()
        status, answer = 200, None
        predictor, batcher = self.predictor, self.batcher
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                headers = dict(scope["headers"])
                body = await self.read_body(headers, receive)
                query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                name = query.get("name", "request")
                top = query.get("top")
                k = 0 if top is None else int(top) if top.isdigit() else -1
                if not 0 <= k <= len(predictor.class_names):
                    raise ClientError(400, f"`top` must be 0..{len(predictor.class_names)}")
                npy = headers.get(b"content-type", b"").lower().startswith(b"application/x-npy")
                batcher.arriving += 1
                try:
                    images, names, single = await self.images_of(
                        body, name, npy or query.get("format") == "npy"
                    )
                finally:
                    batcher.arriving -= 1
                (prediction, table), row = await batcher.submit(images)
            rows = [
                {"file": printable(file), **fields}
                for file, fields in zip(names, table[row : row + len(names)], strict=True)
            ]
            if k:
                for out, logits in zip(
                    rows, prediction.logits[row : row + len(names)], strict=True
                ):
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
        self.metrics.request("/predict", status, seconds)
        if self.access_log:
            client = scope["client"][0] if scope.get("client") else "-"
            print(f"{client} POST /predict {status} {1000 * seconds:.1f} ms", flush=True)
        elif status >= 400 and status != 499:
            LOG.info("refused a request from %s: %s %s", scope.get("client"), status, answer)
        return (200 if status == 499 else status), answer

    # ---------------------------------------------------------------- the rest

    def describe(self) -> dict[str, Any]:
        predictor, hold = self.predictor, self.hold
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

    async def model(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return 200, self.describe()

    async def health(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        predictor, batcher = self.predictor, self.batcher
        return 200, {
            "status": "ok" if self.ready else "starting",
            "model": str(predictor.path),
            "kind": predictor.kind,
            "policy": predictor.policy["name"],
            "guarantee": (predictor.guarantee or {}).get("promise"),
            "classes": list(predictor.class_names),
            "image_size": self.size,
            "batch_size": self.batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_bytes": self.limits.max_bytes,
            "queued": batcher.queue.qsize(),
            "served": batcher.served,
            "batches": batcher.batches,
            "warm_up_batch_ms": round(1000 * batcher.batch_seconds, 2),
            "model_on_event_loop": batcher.inline,
            "uptime_s": round(time.time() - self.started, 1),
        }

    async def livez(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return 200, {"status": "alive"}

    async def readyz(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return (200 if self.ready else 503), {"ready": self.ready}

    async def metrics_page(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        extra = {
            "queued": self.batcher.queue.qsize(),
            "decode_budget_free_bytes": self.budget.free if self.budget else 0,
        }
        if self.hold is not None:
            held = self.hold.state()
            extra.update(
                budget_target_macs=held["target_macs"],
                budget_window_mean_macs=held["window_mean_macs"] or 0.0,
                budget_drift_ratio=held["drift_ratio"],
                budget_point_macs=held["point_validation_macs"],
                budget_moves=held["moves"],
            )
        return 200, self.metrics.render(extra)


# --------------------------------------------------------------------------- the server


def _guarded_protocol(limits: Limits, metrics: Metrics | None) -> type:
    """uvicorn's HTTP/1.1 protocol (the httptools parser, in C) with deadlines, a bound on a
    request head and a connection cap: a connection that sends no complete request head
    within ``header_timeout`` (a slow or idle client), or whose request is not answered
    within ``request_timeout``, is closed; a head over ``MAX_HEAD_BYTES`` gets a 431; beyond
    ``max_connections`` a new connection is closed at once. Each closes with one log line."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Guarded(HttpToolsProtocol):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _awaiting_head = True
        _head_bytes = 0

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

        def on_headers_complete(self) -> None:  # a request head arrived
            self._awaiting_head, self._head_bytes = False, 0
            self._arm(limits.request_timeout, f"no answer within {limits.request_timeout:g} s")
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self._disarm()
            self._awaiting_head = True
            super().on_response_complete()

        def data_received(self, data: bytes) -> None:
            waiting = self._awaiting_head
            if waiting and self._deadline is None:
                self._arm(
                    limits.header_timeout, f"no whole request within {limits.header_timeout:g} s"
                )
            super().data_received(data)
            if waiting and self._awaiting_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    LOG.warning("refused a request from %s: a head over %d bytes",
                                self.client, MAX_HEAD_BYTES)  # fmt: skip
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"content-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    self.transport.close()

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
        http=_guarded_protocol(limits, getattr(app, "metrics", None)),
        timeout_keep_alive=int(max(1, limits.idle_timeout)),
        timeout_graceful_shutdown=int(max(1, limits.shutdown_timeout)),
        proxy_headers=False,
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
