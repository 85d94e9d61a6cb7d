"""The one gate every user-supplied file, folder, body and name passes through.

Dataset readers, ``predict``'s inputs, ``serve``'s request bodies, exports and their
manifests, checkpoints and result files all read through here, so one set of checks holds
for every surface, today's and tomorrow's:

- only regular files are opened: a FIFO (which would block forever), a device (endless) or
  a socket is refused by its status, before it is opened;
- a file's size is bounded before it is read, and a sparse file (long, but small on disk)
  is refused, since it expands to its length when read;
- every read has a byte limit: a file is read up to the size its status gives, never "to
  the end" (a file that says it is empty, like ``/proc/kmsg``, is read as empty, however
  long it would make a reader wait);
- folders are walked in the order of their sorted paths as they are read, without
  following a link that leaves the folder given (a link to ``/etc`` is named and
  skipped, not walked) or one back into a folder already walked (a link loop ends);
- decoded sizes are bounded: pixels per image, bytes an array or archive member expands to;
- names are made safe to print and to write: bytes that are not UTF-8 are escaped, and a
  table cell that a spreadsheet would run as a formula is neutralised.

Torch-free: the export runtime reads its manifests here too.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from dynroute.core.errors import DynrouteError

#: An image file (in a folder or a zip) larger than this is refused before it is read.
MAX_IMAGE_FILE_BYTES = 128 << 20
#: An image may have at most this many pixels (after a JPEG's reduced-scale decoding).
MAX_IMAGE_PIXELS = 64 << 20
#: A file may expand to at most this many times the bytes it takes on disk: a zip member
#: or .gz stream its compressed size, a file its allocated blocks (a sparse file), an array
#: the bytes that store it. Checked for what expands to more than ``EXPANSION_FREE_BYTES``.
MAX_EXPANSION_RATIO = 100
EXPANSION_FREE_BYTES = 16 << 20
#: A JSON file (manifest, checksums, result, record) larger than this is refused.
MAX_JSON_BYTES = 256 << 20
#: An array file (.npz, .npy) to classify larger than this is refused.
MAX_ARRAY_FILE_BYTES = 2 << 30


#: What a failed file operation's errno means for the user, where ``strerror`` is not enough.
_REASONS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def os_reason(exc: OSError) -> str:
    """The one short reason of a failed file operation, read or write ("Permission denied",
    "the file system is read-only"), without errno noise."""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def cannot_read(path: Path | str, exc: OSError) -> DynrouteError:
    """The one message for a file that exists but cannot be read (permissions, I/O)."""
    return DynrouteError(f"cannot read {path}: {os_reason(exc)}")


def utf8_name(name: str, where: Path | str) -> str:
    """``name`` if it is valid UTF-8 (names become class names, manifests and messages);
    else a ``DynrouteError`` showing its raw bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise DynrouteError(
            f"{where}: the name {raw!r} is not valid UTF-8; rename it (e.g. with convmv)"
        ) from None
    return name


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def expansion_problem(expanded: int, stored: int) -> str | None:
    """Why ``expanded`` bytes from ``stored`` bytes on disk is too much, or None."""
    if expanded <= EXPANSION_FREE_BYTES or expanded <= MAX_EXPANSION_RATIO * stored:
        return None
    return (
        f"{expanded} bytes from {stored} bytes on disk, more than {MAX_EXPANSION_RATIO} times "
        f"(the limit, MAX_EXPANSION_RATIO)"
    )


class NpyHeader(NamedTuple):
    """What an ``.npy`` header declares: enough to size, check and stream its values."""

    shape: tuple[int, ...]
    dtype: Any
    fortran_order: bool
    #: Bytes its values take: shape times item size.
    declared: int


def read_npy_header(handle: IO[bytes]) -> NpyHeader:
    """An ``.npy`` stream's header, before numpy allocates anything (a forged shape is caught
    by comparing ``declared`` with the bytes that hold it). ValueError or EOFError on a bad
    header, a negative dimension included; the stream is left after the header."""
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(handle, max_header_size=10_000)
    if any(side < 0 for side in shape):
        raise ValueError(f"the header declares a negative dimension, shape {shape}")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    return NpyHeader(tuple(shape), dtype, bool(fortran_order), declared)


def npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], Any, int]:
    """An ``.npy`` stream's shape, dtype and the bytes its values declare
    (``read_npy_header``)."""
    header = read_npy_header(handle)
    return header.shape, header.dtype, header.declared


def check_regular(path: Path, status: os.stat_result) -> None:
    """Refuse a file that is not a regular file, or a sparse one, by its status alone."""
    if not stat.S_ISREG(status.st_mode):
        raise DynrouteError(
            f"{path} is {file_kind(status.st_mode)}, not a regular file; it is never opened"
        )
    blocks = getattr(status, "st_blocks", None)
    if blocks is not None and expansion_problem(status.st_size, blocks * 512):
        raise DynrouteError(
            f"{path} is a sparse file: {status.st_size} bytes long but {blocks * 512} bytes on "
            f"disk, more than {MAX_EXPANSION_RATIO} times (the limit, MAX_EXPANSION_RATIO); "
            "refused before reading it"
        )


def open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular, non-sparse file; anything else (a FIFO
    that would block forever, a device, a socket) is refused by name without being opened."""
    try:
        check_regular(path, path.stat())
        # O_NONBLOCK: should ``path`` have become a FIFO since, opening it cannot block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC)
    except OSError as exc:
        raise cannot_read(path, exc) from exc
    try:
        check_regular(path, os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_exactly(handle: IO[bytes], count: int, where: Path | str) -> bytes:
    """The next ``count`` bytes of ``handle`` and not one more (every read here has a limit):
    a stream that ends sooner is a ``DynrouteError`` naming ``where``."""
    parts, left = [], count
    try:
        while left > 0:
            part = handle.read(min(left, 1 << 24))
            if not part:
                raise DynrouteError(
                    f"{where} ends after {count - left} of the {count} bytes it should hold "
                    "(truncated, or changed while it was read)"
                )
            parts.append(part)
            left -= len(part)
    except OSError as exc:
        raise cannot_read(where, exc) from exc
    return b"".join(parts)


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes, as many as its status says it holds and never more (a file
    that claims to be empty but would block or never end, ``/proc/kmsg``, reads as empty);
    ``limit``: refuse a larger file (by its size) before reading."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise DynrouteError(f"{path} holds {size} bytes, more than the limit of {limit}")
        return read_exactly(handle, size, path)


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest (``hashlib`` ``algorithm``: "md5", "sha256") of a regular file,
    streamed a block at a time and read up to the size its status gives, never to the end
    (a file that claims to be empty but would block is the digest of nothing)."""
    import hashlib

    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open_regular(path) as handle:
        left = os.fstat(handle.fileno()).st_size
        while left > 0:
            block = read_exactly(handle, min(left, 1 << 20), path)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def _inside(real: str, top: str) -> bool:
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def walk(root: Path, hidden: Iterable[str] = ()) -> Iterator[tuple[Path, str | None]]:
    """Every entry below folder ``root`` that is not a folder, in the order of its sorted
    path, as it is found (only the names of the folders on the way down are held, never the
    tree's): ``(path,
    None)`` for a regular file, ``(path, why it is skipped)`` for one never opened (a FIFO,
    a device, a socket, a broken link, a folder that cannot be listed, or a link that leaves
    ``root``: it is not followed, so a link to ``/etc`` is one line, not ``/etc``). Links
    inside ``root`` are followed, but a folder already walked (a link loop, two links to one
    folder) is walked once; names starting with one of ``hidden`` are skipped. A ``root``
    that cannot be listed is a ``DynrouteError``."""
    skip = tuple(hidden)
    top = os.path.realpath(root)
    try:
        first = os.stat(root)
    except OSError as exc:
        raise cannot_read(root, exc) from None
    seen = {(first.st_dev, first.st_ino)}
    try:
        listing = sorted(os.listdir(root))
    except OSError as exc:
        raise cannot_read(root, exc) from None
    stack: list[tuple[Path, Iterator[str]]] = [(root, iter(listing))]
    while stack:
        folder, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        if skip and name.startswith(skip):
            continue
        path = folder / name
        try:
            status = os.lstat(path)
            if stat.S_ISLNK(status.st_mode):
                real = os.path.realpath(path)
                if not _inside(real, top):
                    yield path, f"a link out of {root} (to {real}): not followed"
                    continue
                status = os.stat(path)
        except OSError:
            yield path, "a broken link: skipped"
            continue
        if stat.S_ISDIR(status.st_mode):
            if (status.st_dev, status.st_ino) in seen:
                continue
            seen.add((status.st_dev, status.st_ino))
            try:
                stack.append((path, iter(sorted(os.listdir(path)))))
            except OSError as exc:
                yield path, f"a folder that cannot be listed ({os_reason(exc)}): skipped"
        elif stat.S_ISREG(status.st_mode):
            yield path, None
        else:
            yield path, f"{file_kind(status.st_mode)}, not a file: skipped"


def printable(text: str) -> str:
    """``text`` with what is not valid UTF-8 (a file name's undecodable bytes) escaped as
    ``\\xNN``, and control characters (a carriage return that would split a row) escaped,
    so it can be printed and written anywhere."""
    if text.isprintable():
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    raw = text.encode("utf-8", "surrogateescape")
    decoded = raw.decode("utf-8", "backslashreplace")
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in decoded
    )


#: What a spreadsheet runs as a formula when a cell starts with it.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def table_cell(text: str) -> str:
    """A text cell safe to open in a spreadsheet: printable (``printable``) and, if it
    starts like a formula, led by an apostrophe (what spreadsheets show as text)."""
    text = printable(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def read_json_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> str:
    """A JSON (or other UTF-8 text) file's text, through the gate; text that is not UTF-8
    is a one-line refusal."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DynrouteError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
