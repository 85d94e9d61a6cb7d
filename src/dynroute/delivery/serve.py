"""An HTTP endpoint over a predictor (``dynroute serve``), with dynamic batching.

Built on Starlette (ASGI) and served by uvicorn. ``POST /predict`` takes one image file as
the request body (any format Pillow reads; ``?name=`` sets the ``file`` field of the
answer) and answers with the JSON row ``dynroute predict`` writes: file, class,
confidence, exit, MACs. ``GET /health`` says whether the model is loaded and how busy it is;
``GET /model`` what it runs (policy, k_cpt, how it was chosen) and the guarantee its
operating point holds with, if it was calibrated with one.

Requests are decoded in worker threads, then queued; one batching task takes whatever is
queued, waits at most ``max_wait_ms`` for more (up to ``batch_size``), and runs the batch
in the model's own thread, so concurrent clients share batches and the early-exit runtime
splits them as usual. Bad input is answered with a 4xx and a JSON ``{"error": ...}``:
400 for an empty body or a file that is not a readable image, 413 for a body over
``max_bytes`` or an image over ``max_pixels``, 415 for a multipart form (send the bytes
themselves), 503 when the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dynroute.data.files import read_image_bytes
from dynroute.delivery.predict import Predictor
from dynroute.errors import DynrouteError

DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_QUEUE = 4096


class ClientError(Exception):
    """A request the server refuses: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _starlette() -> Any:
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise DynrouteError(
            "serving needs starlette and uvicorn: pip install 'dynroute[serve]'"
        ) from None


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

    async def submit(self, image: np.ndarray) -> tuple[Any, int]:
        """(prediction, row) of one (3, size, size) image, once its batch has run."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise ClientError(503, "the server is overloaded; retry later") from None
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.batch_size:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            batch = np.stack([image for image, _ in items])
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
            self.served += len(items)
            for row, (_, future) in enumerate(items):
                if not future.done():
                    future.set_result((prediction, row))

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.model_thread.shutdown(wait=False)


def _decode(body: bytes, name: str, size: int, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
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
    try:
        return read_image_bytes(body, name, size)
    except DynrouteError as exc:
        raise ClientError(400, str(exc)) from None


def create_app(
    predictor: Predictor,
    *,
    batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> Any:
    """The Starlette application serving ``predictor`` (see the module's docstring)."""
    _starlette()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    size = predictor.image_size
    if size is None:
        raise DynrouteError(
            f"{predictor.path} reads inputs of shape {predictor.input_shape}, not RGB images: "
            "it cannot be served over HTTP"
        )
    batcher = Batcher(predictor, batch_size, max_wait_ms, max_queue)
    started = time.time()

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ClientError(413, f"the body is {int(declared):,} bytes, over {max_bytes:,}")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            raise ClientError(
                415,
                "send the image file itself as the body (curl --data-binary @image.jpg), "
                "not a multipart form",
            )
        chunks, held = [], 0
        async for chunk in request.stream():
            held += len(chunk)
            if held > max_bytes:
                raise ClientError(413, f"the body is over {max_bytes:,} bytes")
            chunks.append(chunk)
        if not held:
            raise ClientError(400, "the body is empty; send one image file as the body")
        return b"".join(chunks)

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await read_body(request)
            name = request.query_params.get("name", "request")
            image = await run_in_threadpool(_decode, body, name, size, max_pixels)
            prediction, row = await batcher.submit(image)
        except ClientError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except DynrouteError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        single = type(prediction)(
            prediction.logits[row : row + 1],
            prediction.exits[row : row + 1],
            prediction.macs[row : row + 1],
        )
        return JSONResponse(predictor.rows([name], single)[0])

    async def model(request: Request) -> JSONResponse:
        """What the server runs: its operating point and, where one holds, its guarantee."""
        return JSONResponse(
            {
                "model": str(predictor.path),
                "kind": predictor.kind,
                "policy": predictor.policy,
                "k_cpt": predictor.k_cpt,
                "chosen": predictor.how,
                "guarantee": predictor.guarantee,
                "classes": list(predictor.class_names),
                "exits": list(predictor.exit_names.values()),
            }
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "model": str(predictor.path),
                "kind": predictor.kind,
                "policy": predictor.policy["name"],
                "guarantee": (predictor.guarantee or {}).get("promise"),
                "classes": list(predictor.class_names),
                "image_size": size,
                "batch_size": batch_size,
                "max_wait_ms": max_wait_ms,
                "max_bytes": max_bytes,
                "queued": batcher.queue.qsize(),
                "served": batcher.served,
                "batches": batcher.batches,
                "uptime_s": round(time.time() - started, 1),
            }
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, on_ready: Any = None) -> None:
    """Serve ``app`` with uvicorn until interrupted; ``on_ready(host, port)`` is called with
    the port actually bound (``port`` 0 picks a free one)."""
    import socket

    try:
        import uvicorn
    except ImportError:
        raise DynrouteError("serving needs uvicorn: pip install 'dynroute[serve]'") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DynrouteError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(2048)  # connections queue from here on, while uvicorn starts
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(host, bound)
    server.run(sockets=[sock])
