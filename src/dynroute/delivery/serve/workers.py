"""Processes: the listening socket, one worker's server, and the supervisor of many.

With one worker the command's own process serves. With ``workers`` N a supervisor forks N
workers that share the listening socket and a table of counters (``metrics.MetricTable``); each
loads its own model and says on a pipe when it serves, or why it could not start. The
supervisor reports the server ready only once every worker is; a worker that fails to start
stops the server with that worker's error (a non-zero exit). The first worker starts alone,
so that its memory, once its model is loaded, tells whether N of them fit. A worker that
dies later is logged and replaced, after a back-off that grows while replacements keep
failing. SIGTERM or SIGINT, at any time (workers starting included), stops every worker
through its drain; workers also stop if the supervisor itself is killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dynroute.core.errors import DynrouteError, Interrupted
from dynroute.platform.machine import available_memory, resident_bytes, stop_with_parent

from .limits import Limits, check
from .metrics import DOWN, READY, STARTING, MetricTable
from .protocol import guarded_protocol

LOG = logging.getLogger("dynroute.serve")
#: Seconds past ``shutdown_timeout`` before connections still open are closed, and before
#: uvicorn would cancel what is left (never reached: the app answers 503 first).
DRAIN_GRACE = 2.0
#: A replacement waits BACKOFF_FIRST seconds after a death, doubling while replacements
#: keep dying, up to BACKOFF_MOST; a worker that served BACKOFF_RESET seconds resets it.
BACKOFF_FIRST, BACKOFF_MOST, BACKOFF_RESET = 1.0, 30.0, 60.0
#: Replacements that fail to start in a row, with no worker left serving, before the
#: supervisor gives up (exit non-zero with the last error).
MAX_FAILED_STARTS = 5
#: Share of the memory available now that N workers' models may take.
MEMORY_SHARE = 0.8


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound and listening: made with IPPROTO_TCP, so that every connection
    it accepts gets TCP_NODELAY (no Nagle wait on a kept-alive connection's answers)."""
    check("port", port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise DynrouteError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from here on, while the workers start
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise DynrouteError(f"cannot listen on {host}:{port} ({reason})") from None
    return sock


# --------------------------------------------------------------------------- one worker


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="dynroute: %(message)s", stream=sys.stderr)


@contextlib.contextmanager
def one_line_logs() -> Iterator[None]:
    """Every log record of the server and of uvicorn on one line: an exception it carries
    becomes its type and message, never a traceback."""

    class OneLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[1] is not None:
                kind, exc = record.exc_info[0], record.exc_info[1]
                text = f"{record.getMessage().strip()} ({getattr(kind, '__name__', kind)}"
                record.msg, record.args = text + (f": {exc})" if str(exc) else ")"), ()
                record.exc_info, record.exc_text = None, None
            return True

    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn", "asyncio")]
    line = OneLine()
    for logger in loggers:
        logger.addFilter(line)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(line)


def run_app(
    app: Any, sock: socket.socket, limits: Limits, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until SIGTERM or SIGINT (``on_ready`` once it
    serves), draining in-flight requests for up to ``limits.shutdown_timeout`` seconds: what
    is not answered by then gets 503, and connections still open are closed."""
    import uvicorn

    configure_logging()
    app.prepare()
    app.on_started = on_ready

    class Draining(uvicorn.Server):  # type: ignore[misc, valid-type]
        async def shutdown(self, sockets: list | None = None) -> None:
            import asyncio

            app.begin_drain()
            asyncio.get_running_loop().call_later(
                limits.shutdown_timeout + DRAIN_GRACE / 2, self.close_connections
            )
            await super().shutdown(sockets)

        def close_connections(self) -> None:
            for connection in list(self.server_state.connections):
                connection.transport.close()

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=guarded_protocol(limits, app.metrics),
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(math.ceil(limits.shutdown_timeout + DRAIN_GRACE)),
        proxy_headers=False,
    )
    with one_line_logs():
        Draining(config).run(sockets=[sock])


# --------------------------------------------------------------------------- serve


def serve(
    make_app: Callable[[], Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 1,
    limits: Limits | None = None,
    on_ready: Callable[[str, int, str], None] | None = None,
) -> None:
    """Serve the app ``make_app()`` builds, in ``workers`` processes sharing one listening
    socket (each builds its own app after the fork, so each loads its own model).
    ``on_ready(host, port, what)`` once every worker serves. Returns after a stop by
    SIGTERM or SIGINT (raising ``Interrupted`` with that signal), in-flight requests
    answered."""
    limits = limits or Limits()
    check("workers", workers)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]

    def ready(summary: str) -> None:
        if on_ready is not None:
            on_ready(host, bound, summary)

    if workers == 1:
        try:
            app = make_app()
            run_app(app, sock, limits, lambda: ready(app.summary))
        finally:
            sock.close()
        return
    configure_logging()
    Supervisor(make_app, sock, workers, limits).run(ready)


# --------------------------------------------------------------------------- supervision


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def how_it_ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(signum).name}"
        return f"killed by signal {signum}"
    return f"exited with status {os.WEXITSTATUS(status)}"


@dataclass
class Worker:
    """One worker slot: the process in it now, its pipe, and its back-off."""

    slot: int
    pid: int = 0
    pipe: int = -1  # read end; the worker writes JSON lines
    buffer: bytes = b""
    ready_at: float = 0.0
    error: str | None = None
    ended: str = ""  # how its last process ended
    missing_module: str | None = None
    summary: str = ""
    backoff: float = BACKOFF_FIRST
    start_at: float = math.inf  # when a replacement is due (inf: none due)


class Supervisor:
    """Forks, watches and replaces the workers (see the module's docstring)."""

    def __init__(
        self, make_app: Callable[[], Any], sock: socket.socket, workers: int, limits: Limits
    ) -> None:
        self.make_app, self.sock, self.limits = make_app, sock, limits
        self.pid = os.getpid()
        self.table = MetricTable(workers)
        self.slots = [Worker(k) for k in range(workers)]
        self.stop_signal: int | None = None
        self.failed_starts = 0
        self.started = False  # every worker has served once: deaths are replaced from now
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)

    # ---------------------------------------------------------------- the loop

    def run(self, on_ready: Callable[[str], None]) -> None:
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {s: signal.signal(s, self._signalled) for s in signals}
        previous_wakeup = signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        try:
            if self._start_all():
                self.started = True
                on_ready(self.slots[0].summary)
                self._supervise()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            for fd in (self.wake_read, self.wake_write):
                os.close(fd)
            self.sock.close()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)

    def _signalled(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self.stop_signal = signum

    def _wait(self, seconds: float) -> None:
        """Until a signal, a worker's message or ``seconds``; then read messages and reap."""
        pipes = [w.pipe for w in self.slots if w.pipe >= 0]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([self.wake_read, *pipes], [], [], max(0.0, seconds))
            for fd in readable:
                if fd == self.wake_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
                else:
                    self._read(next(w for w in self.slots if w.pipe == fd))
        self._reap()

    # ---------------------------------------------------------------- starting

    def _start_all(self) -> bool:
        """Start every worker (the first alone, then the memory check, then the rest);
        False if a signal stopped the start. A worker that fails raises its error."""
        first = self.slots[0]
        self._fork(first)
        if not self._await_ready([first]):
            return False
        self._check_memory(first)
        for worker in self.slots[1:]:
            if self.stop_signal is not None:
                return False
            self._fork(worker)
        return self._await_ready(self.slots[1:])

    def _await_ready(self, workers: list[Worker]) -> bool:
        while self.stop_signal is None:
            for worker in workers:
                if worker.pid == 0:  # it died or failed while starting
                    self._fail(worker)
            if all(worker.ready_at for worker in workers):
                return True
            self._wait(1.0)
        return False

    def _fail(self, worker: Worker) -> None:
        """Raise a failed worker's error as the server's (a missing package as such, so that
        the command line names the extra to install)."""
        if worker.missing_module is not None:
            raise ModuleNotFoundError(worker.error, name=worker.missing_module)
        raise DynrouteError(
            worker.error or f"worker {worker.slot} {worker.ended} while the server was starting"
        )

    def _check_memory(self, first: Worker) -> None:
        """Refuse more workers than fit: each needs about what the first holds now."""
        workers = len(self.slots)
        each, free = resident_bytes(first.pid), available_memory()
        if workers == 1 or not each or free is None:
            return
        fit = 1 + int(MEMORY_SHARE * free // each)
        if workers > fit:
            raise DynrouteError(
                f"`workers` must be at most {fit} here, got {workers}: each worker holds about "
                f"{each / 2**20:.0f} MB once its model is loaded (measured on the first) and "
                f"{free / 2**20:.0f} MB are available"
            )

    def _fork(self, worker: Worker) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            self._be_worker(worker.slot, write)  # never returns
        os.close(write)
        worker.pid, worker.pipe, worker.buffer = pid, read, b""
        worker.ready_at, worker.error, worker.missing_module = 0.0, None, None
        worker.start_at = math.inf
        self.table.set(worker.slot, "pid", pid)
        self.table.set(worker.slot, "state", STARTING)

    def _be_worker(self, slot: int, pipe: int) -> None:
        """The forked worker: load the model, serve, say so on ``pipe``; exit 0 when
        stopped by a signal, 1 with its error on the pipe otherwise."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, _interrupt)
            for fd in (self.wake_read, self.wake_write, *(w.pipe for w in self.slots)):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            stop_with_parent()
            if self.stop_signal is not None or os.getppid() != self.pid:  # stopped already
                raise Interrupted(signal.SIGTERM)
            app = self.make_app()
            app.metrics.attach(self.table, slot)
            summary = app.summary

            def ready() -> None:
                os.write(pipe, json.dumps({"ready": True, "summary": summary}).encode() + b"\n")

            run_app(app, self.sock, self.limits, ready)
            code = 0
        except Interrupted:
            code = 0
        except BaseException as exc:  # noqa: BLE001 - a worker reports and exits
            message: dict[str, Any] = {"error": str(exc) or type(exc).__name__}
            if isinstance(exc, ModuleNotFoundError):
                message["module"] = exc.name
            elif not isinstance(exc, DynrouteError):
                message["error"] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                os.write(pipe, json.dumps(message).encode() + b"\n")
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _read(self, worker: Worker) -> None:
        try:
            data = os.read(worker.pipe, 65536)
        except OSError:
            data = b""
        if not data:  # the worker closed its end: it is exiting
            os.close(worker.pipe)
            worker.pipe = -1
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("ready"):
                    worker.ready_at, worker.summary = time.monotonic(), message["summary"]
                    self.table.set(worker.slot, "state", READY)
                    self.failed_starts = 0
                    if self.started:
                        LOG.warning("worker %d (pid %d) serves", worker.slot, worker.pid)
                elif "error" in message:
                    worker.error, worker.missing_module = message["error"], message.get("module")

    # ---------------------------------------------------------------- deaths

    def _exited(self) -> Iterator[tuple[Worker, int]]:
        """The workers whose process exited since last asked, with its wait status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.slots if w.pid == pid), None)
            if worker is not None:
                yield worker, status

    def _reap(self) -> None:
        for worker, status in self._exited():
            self._died(worker, status)

    def _died(self, worker: Worker, status: int) -> None:
        """Log a worker's death and schedule its replacement (not while stopping)."""
        if worker.pipe >= 0:  # its last words
            with contextlib.suppress(OSError):
                os.set_blocking(worker.pipe, False)
                while worker.pipe >= 0:
                    self._read(worker)
        pid, was_ready = worker.pid, bool(worker.ready_at)
        worker.pid, worker.ended = 0, how_it_ended(status)
        self.table.set(worker.slot, "state", DOWN)
        if self.stop_signal is not None or not self.started:  # stopping, or failing to start
            return
        if not was_ready:
            self.failed_starts += 1
        served = time.monotonic() - worker.ready_at if was_ready else 0.0
        if served >= BACKOFF_RESET:
            worker.backoff = BACKOFF_FIRST
        why = worker.ended + (f": {worker.error}" if worker.error else "")
        LOG.warning(
            "worker %d (pid %d) %s %s; starting another in %g s",
            worker.slot, pid, "died:" if was_ready else "failed to start:", why, worker.backoff,
        )  # fmt: skip
        worker.start_at = time.monotonic() + worker.backoff
        worker.backoff = min(BACKOFF_MOST, 2 * worker.backoff)

    def _supervise(self) -> None:
        """Replace dead workers until a signal says stop; give up, with the last error, once
        every worker is down and replacements keep failing to start."""
        while self.stop_signal is None:
            now = time.monotonic()
            for worker in self.slots:
                if worker.pid == 0 and worker.start_at <= now:
                    self.table.add(worker.slot, "restarts")
                    self._fork(worker)
                    LOG.warning("worker %d: starting pid %d", worker.slot, worker.pid)
            alive = any(w.pid for w in self.slots)
            if not alive and self.failed_starts >= MAX_FAILED_STARTS:
                last = max(self.slots, key=lambda w: w.error is not None)
                raise DynrouteError(
                    f"every worker is down and the last {self.failed_starts} failed to start: "
                    f"{last.error or 'no reason given'}"
                )
            due = min(w.start_at for w in self.slots)
            self._wait(min(1.0, max(0.0, due - now)))

    def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains), then wait; SIGKILL what outlives the drain."""
        with contextlib.suppress(OSError):
            self.sock.close()  # no new connections queue for workers that are leaving
        for worker in self.slots:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.limits.shutdown_timeout + 2 * DRAIN_GRACE
        while any(w.pid for w in self.slots) and time.monotonic() < deadline:
            self._wait_quietly(min(0.2, deadline - time.monotonic()))
        for worker in self.slots:
            if worker.pid:
                LOG.warning("worker %d (pid %d) outlived the drain: killed", worker.slot,
                            worker.pid)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(worker.pid, 0)
                worker.pid = 0
        for worker in self.slots:
            if worker.pipe >= 0:
                os.close(worker.pipe)
                worker.pipe = -1

    def _wait_quietly(self, seconds: float) -> None:
        """Wait while stopping: deaths are expected, not logged or replaced."""
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_read], [], [], max(0.0, seconds))
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake_read, 4096)
        for worker, _ in self._exited():
            worker.pid = 0
            self.table.set(worker.slot, "state", DOWN)
