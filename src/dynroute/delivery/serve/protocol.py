"""uvicorn's HTTP/1.1 protocol (the httptools parser, in C) with deadlines, a bound on a
request head and a connection cap, each refusal one log line and counted in ``/metrics``."""

from __future__ import annotations

import asyncio
import logging

from .app import to_json
from .limits import Limits
from .metrics import Metrics

LOG = logging.getLogger("dynroute.serve")
#: The most bytes a request's head (its request line and headers) may take.
MAX_HEAD_BYTES = 64 << 10
#: Seconds past ``request_timeout`` before a connection is closed: the app answers a late
#: request itself (408 or 503, with a reason) first; this catches a client that does not
#: read its answer.
CLOSE_GRACE = 1.0


def _refusal(status: bytes, error: str) -> bytes:
    """A whole HTTP answer that closes the connection, with a JSON reason."""
    body = to_json({"error": error})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )  # fmt: skip


def guarded_protocol(limits: Limits, metrics: Metrics) -> type:
    """The protocol class: a connection that sends no complete request head within
    ``header_timeout`` (a slow or idle client), or whose request is not done soon after
    ``request_timeout`` (``CLOSE_GRACE``), is closed; a head over ``MAX_HEAD_BYTES`` gets
    a 431, a request the parser cannot read a 400; beyond ``max_connections`` a new
    connection is closed at once."""
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
                metrics.add("refused")
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
            self._arm(
                limits.request_timeout + CLOSE_GRACE,
                f"no answer within {limits.request_timeout:g} s",
            )
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
                    metrics.request("other", 431, 0.0)
                    self.transport.write(
                        _refusal(b"431 Request Header Fields Too Large",
                                 f"the request head is over {MAX_HEAD_BYTES:,} bytes")
                    )  # fmt: skip
                    self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """A request the parser cannot read: 400 with a JSON reason, counted."""
            if self.transport.is_closing():
                return
            metrics.request("other", 400, 0.0)
            self.transport.write(_refusal(b"400 Bad Request", "not a valid HTTP/1.1 request"))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded
