"""What one server allows, and the range of every number that bounds it on this machine.

Each option of ``dynroute serve`` that bounds work has one ``dynroute.core.checks.Range`` here,
with the reason for it; the command line's argument types (``commands.common.ranged``) and
``Limits`` (for Python callers) check against the same ranges, so a value out of range is
refused with one line naming the option, the range and why, before any model is loaded.
Ranges that depend on the machine (workers by cores, connections by the open-files limit)
are read when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dynroute.core import checks
from dynroute.core.checks import Bounds, Range
from dynroute.core.errors import DynrouteError
from dynroute.io.gate import MAX_IMAGE_PIXELS
from dynroute.platform.machine import available_cores, open_files_limit

#: At most this many workers a core: each holds its own model, and more only share cores.
WORKERS_PER_CORE = 2
#: File descriptors a server keeps for itself (model files, logs, pipes, the listener).
RESERVED_FILES = 64
#: Connections allowed by default, where the open-files limit allows as many.
DEFAULT_MAX_CONNECTIONS = 256
MEGABYTE = 1 << 20


def _bytes(megabytes: Range) -> Range:
    """A range in MB (the command line's unit) as one in bytes (``Limits``' unit)."""
    b = megabytes.bounds
    return Range(
        Bounds(b.low and b.low * MEGABYTE, b.high and b.high * MEGABYTE, b.low_open, b.high_open),
        True,
        megabytes.why,
    )


def ranges() -> dict[str, Range]:
    """Every bounded option of ``dynroute serve`` on this machine, by its name (the flag's
    dest)."""
    cores, files = available_cores(), open_files_limit()
    return {
        "port": checks.PORT,
        "workers": Range(
            Bounds(1, WORKERS_PER_CORE * cores),
            True,
            f"{cores} core(s) available and at most {WORKERS_PER_CORE} workers a core: each "
            "loads its own model, and more only share the cores",
        ),
        "max_connections": Range(
            Bounds(1, max(1, files - RESERVED_FILES)),
            True,
            f"this process may open {files} files (ulimit -n) and keeps {RESERVED_FILES} for "
            "itself",
        ),
        "max_pixels": Range(
            Bounds(1, MAX_IMAGE_PIXELS),
            True,
            "no image is decoded beyond dynroute.io.gate.MAX_IMAGE_PIXELS",
        ),
        "max_wait_ms": Range(
            Bounds(0, 1000),
            False,
            "a batch waits this long for requests still arriving; longer only adds delay",
        ),
        "max_images": Range(
            Bounds(1, 65536),
            True,
            "images in one array request (.npy or .npz); its batches still take --batch-size each",
        ),
        "max_queue": Range(
            Bounds(1, 1 << 20),
            True,
            "images waiting for the model; beyond it requests are refused with 503",
        ),
        "decode_threads": Range(
            Bounds(1, 64),
            True,
            "threads decoding request bodies in each worker; more only share the cores",
        ),
        "batch_size": checks.BATCH_SIZE,
        "max_bytes": _bytes(checks.MEGABYTES),
        "decode_budget": _bytes(checks.MEGABYTES),
        "header_timeout": checks.SECONDS,
        "request_timeout": checks.SECONDS,
        "idle_timeout": checks.SECONDS,
        "shutdown_timeout": checks.SECONDS,
    }


def check(name: str, value: float) -> float:
    """``value`` if option ``name`` admits it; else a ``DynrouteError`` naming the option
    (in backquotes, which the command line writes as its flag), its range and why."""
    return checks.in_range(value, name, ranges()[name])


def default_max_connections() -> int:
    return int(min(DEFAULT_MAX_CONNECTIONS, ranges()["max_connections"].bounds.high or 1))


def default_decode_threads(workers: int = 1) -> int:
    """Two at least (one hostile body never holds up all decoding), else the cores each
    worker may use."""
    return max(2, min(64, available_cores() // max(1, workers)))


@dataclass(frozen=True)
class Limits:
    """What one server process allows (every option of ``dynroute serve`` that bounds
    work), each checked against its range when made."""

    max_bytes: int = 10 * MEGABYTE
    max_pixels: int = 40_000_000
    max_images: int = 1024  # images in one array request (.npy or .npz)
    max_queue: int = 4096  # images waiting for the model, across requests
    decode_budget: int = 512 * MEGABYTE  # bytes of decoded pixels held at once
    decode_threads: int = 0  # 0: default_decode_threads()
    max_connections: int = 0  # 0: default_max_connections()
    header_timeout: float = 10.0  # seconds for a connection to send a whole request head
    request_timeout: float = 30.0  # seconds for a request's body and its answer
    idle_timeout: float = 5.0  # seconds a kept-alive connection may idle
    shutdown_timeout: float = 10.0  # seconds in-flight requests get on SIGTERM

    def __post_init__(self) -> None:
        if not self.decode_threads:
            object.__setattr__(self, "decode_threads", default_decode_threads())
        if not self.max_connections:
            object.__setattr__(self, "max_connections", default_max_connections())
        for field in fields(self):
            check(field.name, getattr(self, field.name))
        if self.max_images > self.max_queue:
            raise DynrouteError(
                f"`max_images` ({self.max_images}) must be at most `max_queue` "
                f"({self.max_queue}): a request of more images could never be queued"
            )
