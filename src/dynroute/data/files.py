"""Files to classify, read as network input exactly as a run's training images were
(``dynroute predict``): walked, read a few ahead in threads, and batched.

What a file becomes is its input format's to say (``dynroute.data.formats``: image files
through Pillow, ``.npy`` and ``.npz`` arrays), the same module a request body of
``dynroute serve`` and a training dataset go through; this module finds the files, reads
them in daemon threads, and joins their examples into batches.

Memory is bounded by what is produced, not only by what is read: a file's examples come in
pieces of at most a batch (an array is read a block of rows at a time, never whole), a
few batches' worth are decoded ahead, and folders are walked as they are read. An 8x8
uint8 image becomes 192 times larger as network input (3 x 32 x 32 float32), so a 6 KB
compressed array of 100,000 of them would be 1.2 GB at once; in pieces it is a few MB.
What a file may hold is reserved before it is read, from its suffix (an image file one
example, anything else a few batches); a file whose first bytes contradict its suffix is
refused (``formats.choose``). Reading happens in daemon threads: one blocked in a read
never keeps ``predict`` from stopping on SIGTERM or Ctrl-C.

The built-in datasets' digits (``mnist``, ``hybrid``) are MNIST digits recoloured with a
random pair of colours each; files are read like the CIFAR images beside them, so a digit
is recognised when it looks like those (coloured strokes on a coloured ground).

Nothing here needs torch: an export is run on files without it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from dynroute.data.formats import Piece, file_pieces, holds_one_example, read_file
from dynroute.data.formats.images import read_image_bytes
from dynroute.data.formats.pixels import GAMMA
from dynroute.io import gate
from dynroute.io.gate import file_kind, printable

# ``read_file`` (one file's examples at once) and ``read_image_bytes`` (one image file's
# bytes as input) are re-exported for Python callers.
__all__ = [
    "Batch",
    "Failure",
    "batches",
    "expand",
    "preprocessing",
    "read_file",
    "read_image_bytes",
]


@dataclass(frozen=True)
class Failure:
    """A file (or path) that could not be read, and why."""

    name: str
    reason: str


@dataclass
class Batch:
    """Readable inputs in file order: ``names`` (one per example; an array's examples are
    ``file:array[i]``), ``images`` (N, 3, size, size) float32, and the files that failed."""

    names: list[str]
    images: np.ndarray
    failures: list[Failure] = field(default_factory=list)
    #: Files read (or failed) since the previous batch, for a progress bar.
    files: int = 0


def preprocessing(dataset: str | None, image_size: int) -> dict[str, Any]:
    """What is done to a file before the network sees it (recorded in an export's manifest)."""
    record: dict[str, Any] = {
        "image_size": image_size,
        "layout": "NCHW float32 (N, 3, size, size), linear intensity in [0, 1]",
        "image_files": (
            "EXIF orientation applied; RGB (grayscale repeated, alpha dropped, 16-bit "
            "grayscale rounded to 8 bits); Pillow bilinear resize to size x size, "
            "stretched, not cropped; then gamma-decoded, (x / 255) ** gamma"
        ),
        "gamma": GAMMA,
        "arrays": (
            "NHW, NHWC or NCHW; uint8 resized like image files then gamma-decoded; float "
            "(intensities in [0, 1]) resized per channel and kept"
        ),
        "dataset": dataset,
    }
    if dataset in ("mnist", "hybrid"):
        record["note"] = (
            "the training digits were MNIST digits recoloured with a random pair of colours "
            "each; files are read like the CIFAR images"
        )
    return record


def expand(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path | Failure]:
    """The files named, and every file below the folders named, as they are found (hidden
    ones skipped, in the order of sorted paths, links that leave a folder not followed,
    each folder walked once however many links lead to it: ``dynroute.io.gate.walk``); a path
    that does not exist, or is no regular file (a FIFO, a device), comes as a ``Failure``
    naming it, never opened."""
    for given in paths:
        path = Path(given)
        try:
            status = path.stat()
        except FileNotFoundError:
            yield Failure(printable(str(path)), "no such file or folder")
            continue
        except OSError as exc:  # a link loop, a denied folder on the way
            yield Failure(printable(str(path)), f"cannot read it: {gate.os_reason(exc)}")
            continue
        if stat.S_ISDIR(status.st_mode):
            try:
                for found, skipped in gate.walk(path, hidden=(".",)):
                    if skipped is None:
                        yield found
                    else:
                        yield Failure(printable(str(found)), printable(skipped))
            except DynrouteError as exc:
                yield Failure(printable(str(path)), printable(str(exc)))
        elif stat.S_ISREG(status.st_mode):
            yield path
        else:
            yield Failure(printable(str(path)), f"{file_kind(status.st_mode)}, not a file")


def failure_reason(path: Path, exc: BaseException, done: int = 0) -> str:
    """Why ``path`` could not be read, in one printable line (``done``: how many of its
    examples came before the fault)."""
    if isinstance(exc, DynrouteError):  # the line names the file: said once is enough
        reason = str(exc)
        for prefix in (f"{path}: ", f"{path}:", f"{path} "):  # "F: why", "F:member: why", "F is"
            if reason.startswith(prefix):
                reason = reason.removeprefix(prefix)
                break
    elif isinstance(exc, MemoryError):
        reason = "too large to decode"
    elif isinstance(exc, OSError):
        reason = f"cannot read it: {gate.os_reason(exc)}"
    else:  # a decoder's own error on a hostile file: the file fails, not the run
        reason = f"cannot read it ({type(exc).__name__}: {exc})"
    if done:
        reason += f" (after its first {done} examples, which were classified)"
    return printable(" ".join(reason.split()))


@dataclass(frozen=True)
class _End:
    """The last item of a file's queue: the file is done, or failed (``failure``)."""

    failure: Failure | None = None


class _FileJob:
    """A file being read: its pieces queue up here, a few at most, in order."""

    #: Pieces a file may have decoded and waiting.
    AHEAD = 2

    def __init__(self, path: Path, cost: int) -> None:
        self.path = path
        self.cost = cost  # examples it may hold decoded at once
        self.pieces: queue.Queue[Piece | _End] = queue.Queue(self.AHEAD)


class _Readers:
    """Daemon threads that read files, one file each at a time, in the order submitted.

    Daemon threads, left behind rather than waited for when the reading stops: a thread
    blocked in a read (a file that never ends, a hung disk) can never keep ``predict`` from
    ending on SIGTERM or Ctrl-C, nor the process from exiting.
    """

    def __init__(self, workers: int, size: int, rows: int) -> None:
        self.size = size
        self.rows = rows
        self.jobs: queue.SimpleQueue[_FileJob | None] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._work, name=f"dynroute-reader-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, job: _FileJob) -> None:
        self.jobs.put(job)

    def _work(self) -> None:
        while not self.stopping.is_set():
            job = self.jobs.get()
            if job is None:
                return
            self._read(job)

    def _read(self, job: _FileJob) -> None:
        done = 0
        end = _End()
        with contextlib.closing(file_pieces(job.path, self.size, self.rows)) as items:
            try:
                for piece in items:
                    if not self._put(job, piece):
                        return
                    done += len(piece[0])
            except Exception as exc:  # noqa: BLE001 - any fault of a file is its failure
                end = _End(Failure(printable(str(job.path)), failure_reason(job.path, exc, done)))
        self._put(job, end)

    def _put(self, job: _FileJob, item: Piece | _End) -> bool:
        while not self.stopping.is_set():
            try:
                job.pieces.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop: threads waiting to queue a piece end at once, one in a read when it
        returns; nothing waits for them."""
        self.stopping.set()
        for _ in self.threads:
            self.jobs.put(None)


def batches(
    entries: Iterable[Path | Failure], size: int, batch_size: int, workers: int = 1
) -> Iterator[Batch]:
    """The examples of ``entries`` (files, and failures to report: ``expand``) in batches of
    ``batch_size`` (the last may be smaller), in order. ``workers`` daemon threads decode
    ahead of the consumer (Pillow and NumPy release the GIL), a few batches' worth at most
    however large a file is. Unreadable files come back as failures with the batch that
    would have held them."""
    checks.in_range(batch_size, "batch_size", checks.BATCH_SIZE)
    checks.in_range(workers, "workers", checks.READERS)
    names: list[str] = []
    chunks: deque[np.ndarray] = deque()
    failures: list[Failure] = []
    done = 0

    def take() -> Batch:
        nonlocal failures, done
        taken = names[:batch_size]
        del names[:batch_size]
        parts, need = [], len(taken)
        while need:
            chunk = chunks[0]
            if len(chunk) <= need:
                parts.append(chunks.popleft())
            else:
                parts.append(chunk[:need])
                chunks[0] = chunk[need:]
            need -= len(parts[-1])
        images = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else None
        if images is None:
            images = np.empty((0, 3, size, size), np.float32)
        batch = Batch(taken, np.ascontiguousarray(images), failures, done)
        failures, done = [], 0
        return batch

    # An image file holds one example, any other file up to a piece per queue slot and one
    # being decoded: what may be in flight is bounded in examples, not files.
    window = max(4 * batch_size, 4 * workers)
    array_cost = (_FileJob.AHEAD + 1) * batch_size
    source = iter(entries)
    pending: deque[_FileJob | Failure] = deque()
    in_flight = 0
    readers = _Readers(workers, size, batch_size)
    try:
        while True:
            while not pending or in_flight < window:
                entry = next(source, None)
                if entry is None:
                    break
                if isinstance(entry, Failure):
                    pending.append(entry)
                    in_flight += 1
                    continue
                job = _FileJob(entry, 1 if holds_one_example(entry) else array_cost)
                readers.submit(job)
                pending.append(job)
                in_flight += job.cost
            if not pending:
                break
            head = pending[0]
            if isinstance(head, Failure):
                failures.append(head)
                item: Piece | _End = _End()
                cost = 1
            else:
                item = head.pieces.get()  # a signal interrupts this wait
                cost = head.cost
            if isinstance(item, _End):
                pending.popleft()
                in_flight -= cost
                done += 1
                if item.failure is not None:
                    failures.append(item.failure)
                continue
            names.extend(item[0])
            chunks.append(item[1])
            while len(names) >= batch_size:
                yield take()
        while names or failures or done:
            yield take()
    finally:
        readers.close()
