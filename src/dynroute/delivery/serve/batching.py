"""Dynamic batching, in the model's thread: images from concurrent requests share batches.

A decoding thread hands a request's images to the batcher (an array request of many is
split into parts of at most the batch size); the model's thread takes what is queued, waits
up to ``max_wait`` for more only while other requests are still being decoded, joins at most
``batch_size`` images, runs the model, makes the answer rows and wakes the event loop once
for the whole batch. The event loop never runs the model or the batching, and an image goes
from its decoding thread straight to the model's, without a turn of the loop in between.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from .bodies import ClientError
from .limits import check


class Ticket:
    """One request's place in the queue: its future on the event loop, and its parts'
    results as the model's thread fills them in."""

    __slots__ = ("future", "loop", "results", "left")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future = self.loop.create_future()
        self.results: list[Any] = []
        self.left = 0

    def given_up(self) -> bool:
        return self.future.cancelled()

    def settle(self, value: Any, if_given_up: Callable[[], None]) -> None:
        """From any thread: the request's future gets ``value``; if the request was given up
        meanwhile, ``if_given_up()`` runs instead (on the event loop, where requests are
        given up, so that nothing falls between)."""

        def resolve() -> None:
            if self.future.done():
                if_given_up()
            else:
                self.future.set_result(value)

        self.loop.call_soon_threadsafe(resolve)

    def fail(self, exc: BaseException) -> None:
        """From any thread: the request fails with ``exc``."""
        self.loop.call_soon_threadsafe(_settle, [(self.future, None, exc)])


def _settle(outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """On the event loop: resolve each future (one that was given up is left alone)."""
    for future, value, exc in outcomes:
        if not future.done():
            if exc is None:
                future.set_result(value)
            else:
                future.set_exception(exc)


class Batcher:
    """Runs queued images through the predictor in batches, in its own thread.
    ``max_queue``: images that may wait at once (beyond, 503)."""

    def __init__(self, predictor: Any, batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        check("batch_size", batch_size)
        check("max_wait_ms", max_wait_ms)
        self.predictor = predictor
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.changed = threading.Condition()
        self.waiting: deque[tuple[np.ndarray, Ticket, int]] = deque()  # images, ticket, part
        self.queued = 0  # images in ``waiting``
        #: Requests being decoded: worth waiting for (nothing else is).
        self.arriving = 0
        self.served = 0
        self.batches = 0
        self.stopping = False
        self.thread: threading.Thread | None = None
        #: Called in the model's thread with each batch's prediction (metrics, the hold).
        self.on_prediction: Callable[[Any], None] = lambda prediction: None
        #: Called with the images queued, whenever that changes (under the batcher's lock).
        self.on_queue: Callable[[int], None] = lambda queued: None
        self.batch_seconds = math.nan

    # ---------------------------------------------------------------- requests

    def expect(self) -> None:
        """A request is being decoded: a batch may wait for it (``arrived`` ends that)."""
        with self.changed:
            self.arriving += 1

    def arrived(self) -> None:
        """A request expected did not come to be queued (it failed, or was refused)."""
        with self.changed:
            self.arriving -= 1
            self.changed.notify()

    def put(self, images: np.ndarray, ticket: Ticket, expected: bool = True) -> None:
        """From any thread: queue ``images`` (N, 3, size, size) for ``ticket``, in parts of
        at most ``batch_size``; 503 if the queue has no room for them all. An ``expected``
        request arrives either way."""
        with self.changed:
            if expected:
                self.arriving -= 1
            if self.queued + len(images) > self.max_queue:
                self.changed.notify()
                raise ClientError(503, "the server is overloaded (its queue is full); retry later")
            parts = range(0, len(images), self.batch_size)
            ticket.results, ticket.left = [None] * len(parts), len(parts)
            for part, start in enumerate(parts):
                self.waiting.append((images[start : start + self.batch_size], ticket, part))
            self.queued += len(images)
            self.on_queue(self.queued)
            self.changed.notify()

    async def submit(self, images: np.ndarray) -> list[tuple[Any, list, int, int]]:
        """On the event loop: ``images`` queued and run; for each part, (prediction, answer
        rows, first row, rows), in order."""
        ticket = Ticket()
        self.put(images, ticket, expected=False)
        return await ticket.future

    # ---------------------------------------------------------------- the model's thread

    def _take(self, items: list, count: int) -> int:
        """Move what fits in the batch from the queue into ``items`` (under the lock); the
        new count. A part whose request was given up is dropped."""
        while self.waiting:
            images, ticket, _ = self.waiting[0]
            if ticket.given_up():
                self.waiting.popleft()
                self.queued -= len(images)
                continue
            if count + len(images) > self.batch_size:
                break
            items.append(self.waiting.popleft())
            self.queued -= len(images)
            count += len(images)
        self.on_queue(self.queued)
        return count

    def _collect(self) -> list[tuple[np.ndarray, Ticket, int]] | None:
        """The next batch: what is queued, and what arrives within ``max_wait`` while other
        requests are still being decoded, up to ``batch_size`` images; None to stop."""
        items: list = []
        with self.changed:
            count = 0
            while not items:
                while not self.waiting and not self.stopping:
                    self.changed.wait()
                if self.stopping:
                    return None
                count = self._take(items, 0)
            deadline = time.monotonic() + self.max_wait
            while count < self.batch_size and not self.waiting and self.arriving > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
                count = self._take(items, count)
        return items

    def _predict(self, parts: list[np.ndarray]) -> tuple[Any, list[dict[str, Any]]]:
        """The batch's prediction and its answer rows (without file names): made once per
        batch rather than once per request."""
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        prediction = self.predictor.predict(batch)
        rows = self.predictor.rows(None, prediction)
        self.on_prediction(prediction)
        return prediction, rows

    def _run(self) -> None:
        while (items := self._collect()) is not None:
            try:
                prediction, table = self._predict([images for images, _, _ in items])
            except Exception as exc:  # noqa: BLE001 - every waiting request answers, serving goes on
                failed: dict[int, Ticket] = {id(ticket): ticket for _, ticket, _ in items}
                for ticket in failed.values():
                    ticket.fail(exc)
                continue
            self.batches += 1
            done, row = [], 0
            for images, ticket, part in items:
                ticket.results[part] = (prediction, table, row, len(images))
                ticket.left -= 1
                if ticket.left == 0:
                    done.append((ticket.future, ticket.results, None))
                row += len(images)
                self.served += len(images)
            if done:  # one wake of the event loop for the whole batch
                done[0][0].get_loop().call_soon_threadsafe(_settle, done)

    # ---------------------------------------------------------------- life

    def warm_up(
        self, shape: tuple[int, ...], predict: Callable[[np.ndarray], Any] | None = None
    ) -> None:
        """Run a batch of noise through ``predict`` (the predictor's, by default) before
        serving, so that the first request does not pay for the model's allocations, and time
        it (``/health`` reports it). Beyond 64 images the time is scaled from 64."""
        predict = predict or self.predictor.predict
        rows = min(self.batch_size, 64)
        noise = np.random.default_rng(0).random((rows, *shape), dtype=np.float32)
        predict(noise)  # first call: allocations
        started = time.perf_counter()
        predict(noise)
        self.batch_seconds = (time.perf_counter() - started) * self.batch_size / rows

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="dynroute-model", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
