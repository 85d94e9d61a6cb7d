"""The ASGI application: routes, the ``/predict`` pipeline, health, metrics and the drain.

A plain ASGI callable, no framework between the HTTP parser and the model (a request costs
tens of microseconds here, not hundreds). The event loop only moves bytes: it reads a body,
hands it to a decoding thread, queues the images for the batcher (whose model runs in its
own thread) and writes the answer; an answer of many rows is made in a thread too. Every
request, whatever becomes of it, is answered with JSON and counted in ``/metrics``: a
refusal is a 4xx with its reason, an overloaded or stopping server a 503, and a failure the
server did not foresee a 500 with its reason and one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.data.formats import InputLimits
from dynroute.io.gate import printable

from .batching import Batcher, Ticket
from .bodies import (
    SMALL_DECODE_BYTES,
    Body,
    ClientDisconnect,
    ClientError,
    DecodeBudget,
    Decoded,
    DecodeProcesses,
    declared_format,
    decode_small,
    query_of,
    read_body,
    top_classes,
    top_of,
)
from .limits import Limits
from .metrics import Metrics

LOG = logging.getLogger("dynroute.serve")
#: Answers to a path the server has, asked with another method; and to any other path.
_NOT_ALLOWED = (405, {"error": "Method Not Allowed"})
_NOT_FOUND = (404, {"error": "Not Found"})
JSON = b"application/json"
PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"


def server_packages() -> None:
    """Refuse early, in one line, where the serve extra is missing."""
    try:
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DynrouteError(
            "serving needs uvicorn and httptools: pip install 'dynroute[serve]'"
        ) from None


def to_json(answer: Any) -> bytes:
    return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def answer_rows(
    names: list[str], parts: list, k: int, class_names: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Each example's answer row: its batch's row with its name (as ``predict`` names a
    file's examples: ``name`` for an image, ``name[i]`` for an array's), and the top ``k``
    classes if asked."""
    rows = []
    for prediction, table, first, count in parts:
        for row in range(first, first + count):
            out = {"file": printable(names[len(rows)]), **table[row]}
            if k:
                out["top"] = top_classes(prediction.logits[row], class_names, k)
            rows.append(out)
    return rows


class ServeApp:
    """The ASGI application serving ``predictor`` (see the package's docstring). ``hold``:
    a ``dynroute.deploy.budget.BudgetHold`` whose state ``/metrics`` reports."""

    def __init__(
        self,
        predictor: Any,
        *,
        batch_size: int = 32,
        max_wait_ms: float = 5.0,
        limits: Limits | None = None,
        access_log: bool = False,
        hold: Any = None,
    ) -> None:
        server_packages()
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
        self.summary = predictor.describe()
        #: What one body may hold, checked from its header before it is decoded.
        self.body_limits = InputLimits(
            max_pixels=self.limits.max_pixels, max_examples=self.limits.max_images
        )
        self.batcher = Batcher(predictor, batch_size, max_wait_ms, self.limits.max_queue)
        self.metrics = Metrics(predictor.exit_names)
        self.batcher.on_prediction = self._predicted
        self.batcher.on_queue = lambda queued: self.metrics.set("queued", queued)
        #: A held budget's state, as of the last batch (read where the model runs, so that
        #: the event loop never reads it while a batch changes it).
        self.hold_state = None if hold is None else hold.state()
        self.decoders = ThreadPoolExecutor(
            self.limits.decode_threads, thread_name_prefix="dynroute-decode"
        )
        self.processes = DecodeProcesses(max(1, self.limits.decode_threads // 2))
        self.started = time.time()
        self.ready = False
        self.draining = False
        self.drain_expired = False
        #: Requests being handled (not yet answering): given 503 if the drain runs out.
        self.in_flight: set[asyncio.Task] = set()
        #: Called once the app serves (after its lifespan startup).
        self.on_started: Callable[[], None] | None = None
        self.budget: DecodeBudget | None = None
        self.routes: dict[str, tuple[str, Callable[..., Any]]] = {
            "/predict": ("POST", self.predict),
            "/health": ("GET", self.health),
            "/livez": ("GET", self.livez),
            "/readyz": ("GET", self.readyz),
            "/model": ("GET", self.model),
            "/metrics": ("GET", self.metrics_page),
        }

    def _predicted(self, prediction: Any) -> None:
        """After each batch, in the model's thread: the counters, the held budget's state."""
        self.metrics.prediction(prediction.exits, prediction.macs)
        self.metrics.add("served", len(prediction.exits))
        self.metrics.add("batches")
        if self.hold is not None:
            self.hold_state = self.hold.state()
            self.metrics.hold(self.hold_state)

    def prepare(self) -> None:
        """Warm the model up before serving (a held budget's window counts served images
        only, so its model is warmed directly)."""
        direct = None if self.hold is None else self.hold.model.predict
        self.batcher.warm_up(tuple(self.predictor.input_shape), direct)
        self.metrics.set("warm_up_ms", 1000 * self.batcher.batch_seconds)
        if self.hold is not None:
            self.metrics.hold(self.hold_state)

    # ---------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, handler = self.routes.get(scope["path"], (None, None))
        label = scope["path"] if handler is not None else "other"
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            if handler is None:
                status, answer = _NOT_FOUND
            elif scope["method"] != method and not (method == "GET" and scope["method"] == "HEAD"):
                status, answer = _NOT_ALLOWED
            else:
                status, answer = await handler(scope, receive)
        except ClientError as exc:
            status, answer = exc.status, {"error": str(exc)}
        except ClientDisconnect:
            status, answer = 499, None  # the client went away: nothing to answer
        except asyncio.CancelledError:
            if not self.drain_expired:
                raise
            task.uncancel()
            status, answer = (
                503,
                {
                    "error": "the server is stopping and could not answer this request within "
                    f"its shutdown timeout ({self.limits.shutdown_timeout:g} s); retry"
                },
            )
        except DynrouteError as exc:
            status, answer = 500, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - never a traceback or a bare 500
            status, answer = 500, {"error": f"internal error ({type(exc).__name__}: {exc})"}
        finally:
            self.in_flight.discard(task)
        seconds = time.perf_counter() - started
        self.metrics.request(label, status, seconds)
        if self.access_log:
            client = scope["client"][0] if scope.get("client") else "-"
            line = f"{client} {scope['method']} {label} {status} {1000 * seconds:.1f} ms"
            print(line, flush=True)
        elif status >= 400 and status not in (404, 499):  # one line each
            what = "failed" if status >= 500 and status != 503 else "refused"
            LOG.info("%s a request from %s: %s %s", what, scope.get("client"), status, answer)
        await self._send(scope, send, status, answer, method)

    async def _send(
        self, scope: dict, send: Callable, status: int, answer: Any, method: str | None
    ) -> None:
        if isinstance(answer, bytes):
            body, kind = answer, JSON
        elif isinstance(answer, str):
            body, kind = answer.encode(), PROMETHEUS
        else:
            body, kind = to_json(answer), JSON
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if status == 405 and method is not None:
            headers.append((b"allow", method.encode()))
        if self.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.budget = DecodeBudget(self.limits.decode_budget)
                self.metrics.set("decode_free", self.budget.free)
                self.batcher.start()
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
                if self.on_started is not None:
                    self.on_started()
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                self.batcher.stop()
                self.decoders.shutdown(wait=False, cancel_futures=True)
                self.processes.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---------------------------------------------------------------- the drain

    def begin_drain(self) -> None:
        """SIGTERM: not ready any more, answers close their connections, and requests still
        in hand when ``shutdown_timeout`` runs out are answered 503."""
        self.ready, self.draining = False, True
        asyncio.get_running_loop().call_later(self.limits.shutdown_timeout, self._expire_drain)

    def _expire_drain(self) -> None:
        self.drain_expired = True
        for task in list(self.in_flight):
            task.cancel()

    # ---------------------------------------------------------------- /predict

    def _decode(self, body: Body, ticket: Ticket, found: list[Decoded]) -> None:
        """In a decoding thread: the body's examples (added to ``found``), queued straight for
        the model's thread (no turn of the event loop between). A body that needs more than
        ``SMALL_DECODE_BYTES`` goes back to the loop, to be decoded by a process under its
        share of the decode budget; the request's arrival is the loop's to end then."""
        try:
            decoded = decode_small(body, min(SMALL_DECODE_BYTES, self.limits.decode_budget))
        except Exception as exc:  # noqa: BLE001 - the request answers with it
            self.batcher.arrived()
            ticket.fail(exc)
            return
        if isinstance(decoded, int):  # a large body: the bytes decoding it takes
            ticket.settle(decoded, self.batcher.arrived)
            return
        found.append(decoded)
        try:
            self.batcher.put(decoded.images, ticket)
        except ClientError as exc:
            ticket.fail(exc)

    async def decoded_and_run(self, body: Body) -> tuple[Decoded, list]:
        """The body decoded (in the decoding threads) and run (in the model's): what it
        held, and for each part of at most a batch, (prediction, rows, first row, rows)."""
        batcher, budget = self.batcher, self.budget
        assert budget is not None
        ticket, found = Ticket(), []
        batcher.expect()
        try:
            self.decoders.submit(self._decode, body, ticket, found)
        except RuntimeError:  # the server is stopping: its threads are gone
            batcher.arrived()
            raise ClientError(503, "the server is stopping; retry") from None
        outcome = await ticket.future
        if isinstance(outcome, list):
            return found[0], outcome
        try:  # a large body: decoded by a process, under its share of the budget
            async with budget.hold(outcome):
                self.metrics.set("decode_free", budget.free)
                decoded = await self.processes.decode(body)
        except BaseException:
            batcher.arrived()
            raise
        finally:
            self.metrics.set("decode_free", budget.free)
        ticket = Ticket()
        batcher.put(decoded.images, ticket)
        return decoded, await ticket.future

    async def predict(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        predictor, limits = self.predictor, self.limits
        arrived = False
        try:
            async with asyncio.timeout(limits.request_timeout):
                headers = dict(scope["headers"])
                query = query_of(scope["query_string"])
                k = top_of(query, len(predictor.class_names))
                declared = declared_format(headers, query)
                data = await read_body(headers, receive, limits.max_bytes)
                arrived = True
                name = query.get("name", "request")
                body = Body(data, name, declared, self.size, self.body_limits)
                decoded, parts = await self.decoded_and_run(body)
        except TimeoutError:
            if not arrived:
                raise ClientError(408, "the request's body took too long to arrive") from None
            raise ClientError(
                503, f"the server could not answer within {limits.request_timeout:g} s "
                "(--request-timeout); retry later",
            ) from None  # fmt: skip
        if decoded.one_example:
            return 200, answer_rows(decoded.names, parts, k, predictor.class_names)[0]
        rows = await asyncio.get_running_loop().run_in_executor(
            self.decoders, self._rows_json, decoded.names, parts, k
        )
        return 200, rows

    def _rows_json(self, names: list[str], parts: list, k: int) -> bytes:
        """An array's answer, made in a decoding thread (thousands of rows would hold the
        event loop for milliseconds)."""
        return to_json(answer_rows(names, parts, k, self.predictor.class_names))

    # ---------------------------------------------------------------- the rest

    def describe(self) -> dict[str, Any]:
        predictor = self.predictor
        return {
            "model": str(predictor.path),
            "kind": predictor.kind,
            "policy": predictor.policy,
            "k_cpt": predictor.k_cpt,
            "chosen": predictor.how,
            "guarantee": predictor.guarantee,
            "classes": list(predictor.class_names),
            "exits": list(predictor.exit_names.values()),
            "hold": self.hold_state,
        }

    async def model(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return 200, self.describe()

    async def health(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        """This server's state; counters summed over every worker, and each worker's."""
        predictor, metrics = self.predictor, self.metrics
        answer = {
            "status": "ok" if self.ready else "stopping" if self.draining else "starting",
            "model": str(predictor.path),
            "kind": predictor.kind,
            "policy": predictor.policy["name"],
            "guarantee": (predictor.guarantee or {}).get("promise"),
            "classes": list(predictor.class_names),
            "image_size": self.size,
            "batch_size": self.batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_bytes": self.limits.max_bytes,
            "queued": int(metrics.total("queued", live_only=True)),
            "served": int(metrics.total("served")),
            "batches": int(metrics.total("batches")),
            "warm_up_batch_ms": round(1000 * self.batcher.batch_seconds, 2),
            "uptime_s": round(time.time() - self.started, 1),
        }
        if len(metrics.table.rows) > 1:
            answer["workers"] = metrics.workers()
            answer["answered_by"] = metrics.worker
        return 200, answer

    async def livez(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return 200, {"status": "alive"}

    async def readyz(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return (200 if self.ready else 503), {"ready": self.ready}

    async def metrics_page(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        return 200, self.metrics.render()
