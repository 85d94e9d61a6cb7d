"""Request bodies: read (on the event loop: bytes only), then decoded off it.

A body is any input ``dynroute predict`` reads as a file (``dynroute.data.formats``: an
image file, an ``.npy`` or ``.npz`` array), recognised the same way (its content type or
``?format=`` if they name a format, else its first bytes) and decoded by the same code,
so a file and the same bytes sent as a body give the same classes. Its header is checked
against the server's limits (pixels, images a request) before anything is decoded, and
every refusal is a ``ClientError``: a status (413 for a limit, else 400) and a reason.

A small body (decoding it holds at most ``SMALL_DECODE_BYTES``) is decoded by a thread; a
larger one by a separate process (``DecodeProcesses``), under a share of the decode budget:
some of Pillow's decoders (WebP's) hold the interpreter's lock for their whole decode,
which for a large image would stall the event loop for a tenth of a second or more; in a
process it stalls nothing, and a decoder that crashes takes only that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data import formats

LOG = logging.getLogger("dynroute.serve")
#: Bodies whose decoding holds at most this many bytes (an image of about 170,000 pixels)
#: are decoded by the thread that opens them, outside the decode budget (at most one such
#: body per thread, a few milliseconds even where the decoder holds the interpreter's lock).
SMALL_DECODE_BYTES = 1 << 20
#: The most query parameters a request may carry (parsing more would cost the event loop).
MAX_QUERY_FIELDS = 16


class ClientError(Exception):
    """A request the server refuses: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple:  # raised in a decoding process, re-raised here
        return (ClientError, (self.status, str(self)))


class ClientDisconnect(Exception):
    """The client closed its connection before its request's body arrived."""


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
            raise ClientError(413, f"decoding the body would take {amount:,} bytes, over the "
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


# --------------------------------------------------------------------------- reading


async def read_body(headers: dict[bytes, bytes], receive: Callable, limit: int) -> bytes:
    """The request's body, refused by its declared length before it is read (413), as a
    multipart form (415), or empty (400); ``ClientDisconnect`` if the client leaves."""
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ClientError(413, f"the body is {declared.decode('latin-1')} bytes, over {limit:,}")
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
        raise ClientError(400, "the body is empty; send an image or array file as the body")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def query_of(raw: bytes) -> dict[str, str]:
    """A request's query parameters (at most ``MAX_QUERY_FIELDS``, else 400)."""
    try:
        return dict(parse_qsl(raw.decode("latin-1"), max_num_fields=MAX_QUERY_FIELDS))
    except ValueError:
        raise ClientError(400, f"more than {MAX_QUERY_FIELDS} query parameters") from None


def top_of(query: dict[str, str], classes: int) -> int:
    """``?top=K``: how many likeliest classes to add, 0..classes in ASCII digits (no
    superscripts or other Unicode digits), else 400."""
    top = query.get("top")
    if top is None:
        return 0
    if re.fullmatch(r"[0-9]{1,9}", top) and int(top) <= classes:
        return int(top)
    shown = top if len(top) <= 20 else top[:20] + "..."
    raise ClientError(400, f"`top` must be a whole number in 0..{classes}, got {shown!r}")


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Body:
    """What a request sent: its bytes, the name its rows carry, the format it declares (or
    None: its first bytes tell) and the limits it is read under."""

    data: bytes
    name: str
    declared: formats.Format | None
    size: int
    limits: formats.InputLimits


@dataclass(frozen=True)
class Decoded:
    """A body's examples: their names and (N, 3, size, size) float32, and whether its
    format holds one example (answered with one row, not a list)."""

    one_example: bool
    names: list[str]
    images: np.ndarray


def declared_format(headers: dict[bytes, bytes], query: dict[str, str]) -> formats.Format | None:
    """The format a request declares: ``?format=`` (400 if no format has that name), else
    its content type if that names one (curl's default form type names none)."""
    try:
        return formats.declared_by(
            headers.get(b"content-type", b"").decode("latin-1"), query.get("format")
        )
    except DynrouteError as exc:
        raise ClientError(400, str(exc)) from None


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """A body's problem as a ``ClientError``: 413 for a limit, 400 for anything else."""
    try:
        yield
    except formats.TooLarge as exc:
        raise ClientError(413, str(exc)) from None
    except DynrouteError as exc:
        raise ClientError(400, str(exc)) from None
    except MemoryError:
        raise ClientError(413, "the body is too large to decode") from None


def open_body(body: Body) -> tuple[formats.Format, formats.Reading]:
    """The body opened by its format and checked against the server's limits (its header
    read, nothing decoded)."""
    with refusals():
        return formats.open_input(
            formats.Input.body(body.data, body.name),
            body.size,
            body.limits,
            body.declared,
            how="its content type or ?format=",
        )


def decode_opened(fmt: formats.Format, reading: formats.Reading, size: int) -> Decoded:
    """An opened body decoded. Runs in a decoding thread or process."""
    with refusals(), reading:
        names, images = reading.whole(size)
    return Decoded(fmt.one_example, names, np.ascontiguousarray(images))


def decode_small(body: Body, limit: int) -> Decoded | int:
    """The body decoded, if decoding it takes at most ``limit`` bytes; else the bytes it
    needs (an int), for the caller to have it decoded by a process under the budget."""
    fmt, reading = open_body(body)
    if reading.cost > limit:
        reading.close()
        return reading.cost
    return decode_opened(fmt, reading, body.size)


def decode_file(body: Body) -> Decoded:
    """The body opened and decoded: in a decoding process."""
    return decode_opened(*open_body(body), body.size)


def _decoding_process_started() -> None:
    """A decoding process leaves SIGINT to its server (a Ctrl-C reaches the whole process
    group) and stops with it."""
    import signal

    from dynroute.platform.machine import stop_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent(signal.SIGKILL)


class DecodeProcesses:
    """Separate processes that decode large bodies, started when the first is needed (a
    server that never sees one never pays for them); a pool broken by a crashed process is
    replaced, and the requests it held get 503."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool: Any = None

    async def decode(self, body: Body) -> Decoded:
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                self.count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_decoding_process_started,
            )
        pool = self.pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, decode_file, body)
        except BrokenProcessPool:
            if self.pool is pool:
                LOG.warning("a decoding process died (a crashed decoder, or memory); new ones "
                            "start with the next large body")  # fmt: skip
                pool.shutdown(wait=False, cancel_futures=True)
                self.pool = None
            raise ClientError(
                503, "the process decoding this body died (a crashed decoder, or memory); "
                "retry, or send a smaller one",
            ) from None  # fmt: skip

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


# --------------------------------------------------------------------------- answers


def top_classes(logits: np.ndarray, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p)[:k]
    return [{"class": names[i], "score": round(float(p[i]), 6)} for i in order]
