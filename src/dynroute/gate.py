"""The one gate every user-supplied file, folder, body and name passes through.

Dataset readers, ``predict``'s inputs, ``serve``'s request bodies, exports and their
manifests, checkpoints and result files all read through here, so one set of checks holds
for every surface, today's and tomorrow's:

- only regular files are opened: a FIFO (which would block forever), a device (endless) or
  a socket is refused by its status, before it is opened;
- a file's size is bounded before it is read, and a sparse file (long, but small on disk)
  is refused, since it expands to its length when read;
- folders are walked without following a link back into a folder already walked, so a
  link loop ends;
- decoded sizes are bounded: pixels per image, bytes an array or archive member expands to;
- names are made safe to print and to write: bytes that are not UTF-8 are escaped, and a
  table cell that a spreadsheet would run as a formula is neutralised.

Torch-free: the export runtime reads its manifests here too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from dynroute.errors import DynrouteError

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


def os_error_text(exc: OSError) -> str:
    """The short reason of an OSError ("Permission denied"), without errno noise."""
    return exc.strerror or str(exc)


def cannot_read(path: Path | str, exc: OSError) -> DynrouteError:
    """The one message for a file that exists but cannot be read (permissions, I/O)."""
    return DynrouteError(f"cannot read {path}: {os_error_text(exc)}")


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


def npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], Any, int]:
    """An ``.npy`` stream's shape, dtype and the bytes its values declare, from the header
    alone, before numpy allocates anything (a forged shape is caught by comparing the
    declared bytes with the bytes that hold them). ValueError or EOFError on a bad header;
    the stream is left after the header."""
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(handle, max_header_size=10_000)
    return shape, dtype, int(np.prod(shape, dtype=object)) * dtype.itemsize


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


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes; ``limit``: refuse a larger file (by its size) before reading."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise DynrouteError(f"{path} holds {size} bytes, more than the limit of {limit}")
        try:
            return handle.read()
        except OSError as exc:
            raise cannot_read(path, exc) from exc


def walk(root: Path, hidden: Iterable[str] = ()) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every entry below folder ``root`` that is not a folder, sorted by path, and the
    entries that are neither regular files nor folders (FIFOs, devices, sockets: never
    opened) with what they are. Links are followed, but a folder already walked (a link
    loop, or two links to one folder) is walked once; names starting with one of
    ``hidden`` are skipped."""
    seen: set[str] = set()
    files: list[Path] = []
    odd: list[tuple[Path, str]] = []
    skip = tuple(hidden)

    def fail(exc: OSError) -> None:
        raise cannot_read(exc.filename or root, exc)

    for folder, subfolders, names in os.walk(root, onerror=fail, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not (skip and d.startswith(skip)))
        for name in names:
            if skip and name.startswith(skip):
                continue
            path = Path(folder) / name
            try:
                status = path.stat()
            except OSError:
                odd.append((path, "a broken link"))
                continue
            if stat.S_ISREG(status.st_mode):
                files.append(path)
            else:
                odd.append((path, file_kind(status.st_mode)))
    return sorted(files), odd


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
