"""NumPy arrays of images: an ``.npy`` file (one array) and an ``.npz`` file (a zip of
them), read the one way a training ``npz:`` dataset, ``predict`` and ``serve`` read them.

Each array with 3 or 4 axes holds images (NHW, NHWC or NCHW; uint8, or float intensities
in [0, 1]: ``pixels.array_images``); an ``.npz``'s other arrays (labels, class names) are
ignored. Nothing is ever unpickled.

Hostile files stay bounded: each array's header (shape, dtype) is checked against the
bytes that hold it before the array is read, so a file that declares more than it holds,
or a compressed member that expands far beyond its size (a zip bomb), is refused before
anything is allocated; its layout, pixel type, pixels per image and examples are checked
against the limits from the header too; then its values are read a block of rows at a
time as they are asked for, so memory holds one block whatever the array's length (an 8x8
uint8 image is 64 bytes stored and 12 KB as 32x32 network input). An .npz's members are
found in a table built once from its directory, so 20,000 arrays read in linear time
(numpy's ``NpzFile`` searches a list of every name for each member: quadratic).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Self

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.data.formats.pixels import LAYOUTS, check_images, image_sides, network_input
from dynroute.data.formats.registry import (
    Format,
    Input,
    InputLimits,
    Piece,
    Reading,
    TooLarge,
    register,
)
from dynroute.io.gate import (
    MAX_ARRAY_FILE_BYTES,
    NpyHeader,
    cannot_read,
    check_regular,
    expansion_problem,
    read_exactly,
    read_npy_header,
)

#: The first bytes of every ``.npy`` stream, and of a zip file (an ``.npz``; an empty one).
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
#: An array read whole (only a Fortran-ordered one, whose rows are not contiguous) may hold
#: at most this many values; every other array is read a block of rows at a time.
MAX_ARRAY_VALUES = 1 << 28
#: At most this many bytes of an array's stored values are read at once.
BLOCK_BYTES = 16 << 20
#: A "no image" message lists at most this many of a file's arrays.
LISTED_ARRAYS = 5


class ArrayFile:
    """Named arrays of an .npz file, of a folder of .npy files (a path) or (``single``) of
    one .npy file or body (named ""), never unpickled; ``header`` checks an array's
    header before it is read, ``stream`` reads it a block of rows at a time."""

    def __init__(self, source: Path | Input, single: bool = False):
        self.source = source if isinstance(source, Input) else Input.file(source)
        self.path = self.source.path
        self.zip: zipfile.ZipFile | None = None
        self.handle: IO[bytes] | None = None
        self.stored = 0
        self.single = False
        self.members: dict[str, zipfile.ZipInfo] = {}
        if self.path is not None and self.path.is_dir():
            try:
                self.names = {p.stem for p in self.path.glob("*.npy")}
            except OSError as exc:
                raise cannot_read(self.path, exc) from exc
            return
        self.handle, self.stored = self.source.open()
        try:
            self._open_file(single)
        except BaseException:
            self.handle.close()
            raise

    @property
    def name(self) -> str:
        return self.source.name

    def _open_file(self, single: bool) -> None:
        assert self.handle is not None
        try:
            magic = self.handle.read(len(NPY_MAGIC))
            if magic == NPY_MAGIC:
                if not single:
                    raise DynrouteError(
                        f"{self.name} holds a single array; save the dataset with np.savez"
                    )
                self.single = True
                self.names = {""}
                return
            self.handle.seek(0)
            self.zip = zipfile.ZipFile(self.handle)
            for info in self.zip.infolist():
                if not info.is_dir():
                    self.members.setdefault(info.filename.removesuffix(".npy"), info)
        except OSError as exc:
            raise cannot_read(self.name, exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            kind = ".npz or .npy" if single else ".npz"
            raise DynrouteError(f"{self.name} is not a readable {kind} file ({exc})") from exc
        self.names = set(self.members)

    def where(self, name: str) -> str:
        if self.single:
            return self.name
        if self.zip is not None:
            return f"{self.name}:{name}"
        assert self.path is not None
        return str(self.path / f"{name}.npy")

    def require(self, *names: str, needed: str = "") -> None:
        """Refuse, naming what the file holds, if an array of ``names`` is missing;
        ``needed``: what needs them, for the message."""
        for name in names:
            if name not in self.names:
                raise DynrouteError(
                    f"{self.name}: no {name} array{needed} "
                    f"(found: {', '.join(sorted(self.names)) or 'nothing'})"
                )

    def _stream(self, name: str) -> IO[bytes]:
        """``name``'s bytes from their start: the zip member, or the .npy file."""
        assert self.handle is not None
        if self.zip is None:
            self.handle.seek(0)
            return _Unclosed(self.handle)  # type: ignore[return-value]
        return self.zip.open(self.members[name])

    def header(self, name: str) -> tuple[NpyHeader, IO[bytes]] | None:
        """The header of array ``name`` of a file, checked against the bytes that hold it,
        and its stream, left at the first value; None for a member that is not an ``.npy``
        array (an .npz may hold other files)."""
        self.require(name)
        where = self.where(name)
        stored = self.stored
        if self.zip is not None:
            info = self.members[name]
            problem = expansion_problem(info.file_size, info.compress_size)
            if problem:
                raise DynrouteError(
                    f"{where} expands to {problem}: refused before expanding it "
                    "(a zip bomb?); save the arrays with np.savez"
                )
            stored = info.file_size
        try:
            with self._stream(name) as peek:
                if peek.read(len(NPY_MAGIC)) != NPY_MAGIC:
                    return None
            stream = self._stream(name)
            try:
                header = read_npy_header(stream)
            except BaseException:
                stream.close()
                raise
        except OSError as exc:
            raise cannot_read(where, exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DynrouteError(f"{where}: not a readable .npy array ({exc})") from exc
        if header.dtype.hasobject:
            stream.close()
            raise DynrouteError(
                f"{where} holds Python objects (an array of object dtype), which are never "
                "unpickled: not a readable .npy array"
            )
        if header.declared > stored:
            stream.close()
            raise DynrouteError(
                f"{where} declares shape {header.shape} of {header.dtype} ({header.declared} "
                f"bytes) but holds only {stored} bytes; the file is damaged or forged"
            )
        return header, stream

    def get(self, name: str) -> np.ndarray:
        """Array ``name`` whole (a folder's .npy memory-mapped)."""
        self.require(name)
        where = self.where(name)
        try:
            if self.handle is None:
                assert self.path is not None
                path = self.path / f"{name}.npy"
                check_regular(path, path.stat())  # never opens a FIFO; refuses a sparse file
                return np.load(path, mmap_mode="r", allow_pickle=False)
            opened = self.header(name)
            if opened is None:
                raise DynrouteError(f"{where} is not an .npy array")
            opened[1].close()
            with self._stream(name) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
        except OSError as exc:
            raise cannot_read(where, exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DynrouteError(f"{where}: not a readable .npy array ({exc})") from exc

    def stream(
        self, name: str, header: NpyHeader, stream: IO[bytes], rows: int
    ) -> Iterator[np.ndarray]:
        """Array ``name`` (its ``header`` and ``stream`` from ``header``) as consecutive
        blocks of at most ``rows`` rows, each read when it is asked for: memory holds one
        block, not the array. A Fortran-ordered array (rare: its rows are not contiguous)
        is read whole first."""
        where = self.where(name)
        try:
            with stream:
                if header.fortran_order or not header.shape:
                    values = read_exactly(stream, header.declared, where)
                    order = "F" if header.fortran_order else "C"
                    whole = np.frombuffer(values, header.dtype).reshape(header.shape, order=order)
                    for start in range(0, len(whole) if whole.ndim else 1, rows):
                        yield whole[start : start + rows] if whole.ndim else whole
                    return
                count = header.shape[0]
                row_bytes = header.declared // count if count else 0
                for start in range(0, count, rows):
                    taken = min(rows, count - start)
                    values = read_exactly(stream, taken * row_bytes, where)
                    yield np.frombuffer(values, header.dtype).reshape(taken, *header.shape[1:])
                stream.read(1)  # at the end of a zip member: its CRC is checked
        except OSError as exc:
            raise cannot_read(where, exc) from exc
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DynrouteError(f"{where}: not a readable .npy array ({exc})") from exc

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()
        if self.handle is not None:
            self.handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Unclosed:
    """A file handle lent to a ``with`` block that must not close it (the .npy file itself,
    which ``ArrayFile`` closes)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def __enter__(self) -> IO[bytes]:
        return self._handle

    def __exit__(self, *exc_info: object) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


class ArrayReading(Reading):
    """The arrays of images of an .npy or .npz file or body, every header checked when it
    is opened; ``pieces`` reads their values a block of rows at a time."""

    def __init__(self, source: Input, size: int, limits: InputLimits) -> None:
        self.size, self.min_side = size, limits.min_side
        self.arrays = ArrayFile(source, single=True)
        try:
            self.images = self._check(limits)
        except BaseException:
            self.arrays.close()
            raise
        self.count = sum(header.shape[0] for _, header in self.images)
        # the network input, joined once, and one block of stored values being converted
        block = max((min(header.declared, BLOCK_BYTES) for _, header in self.images), default=0)
        self.cost = 2 * self.count * 3 * size * size * 4 + block

    def _check(self, limits: InputLimits) -> list[tuple[str, NpyHeader]]:
        """The arrays that hold images and their headers, every header checked against the
        bytes that hold it and the limits, before a value is read (each stream closed again:
        an .npz may hold thousands)."""
        arrays, shapes, images, count = self.arrays, [], [], 0
        for key in sorted(arrays.names):
            opened = arrays.header(key)
            if opened is None:
                shapes.append(f"{key} (not an array)")
                continue
            header, stream = opened
            stream.close()
            shapes.append(f"{key or 'array'} {header.shape}")
            if len(header.shape) not in (3, 4) or header.shape[0] == 0:
                continue  # not images: labels, class names, an empty array
            where = arrays.where(key)
            layout = check_images(header.shape, header.dtype, where, limits.min_side)
            height, width = image_sides(header.shape, layout)
            if height * width > limits.max_pixels:
                raise TooLarge(
                    f"{where}: images of {width}x{height} = {width * height} pixels, more "
                    f"than the limit of {limits.max_pixels:,}"
                )
            values = header.declared // max(1, header.dtype.itemsize)
            if header.fortran_order and values > MAX_ARRAY_VALUES:
                raise DynrouteError(
                    f"{where}: a Fortran-ordered array of {values} values, more than the "
                    f"limit of {MAX_ARRAY_VALUES} (MAX_ARRAY_VALUES) for an array read "
                    "whole; save it with np.ascontiguousarray"
                )
            images.append((key, header))
            count += header.shape[0]
        if not count:
            listed = ", ".join(shapes[:LISTED_ARRAYS]) or "nothing"
            if len(shapes) > LISTED_ARRAYS:
                listed += f" and {len(shapes) - LISTED_ARRAYS} more"
            raise DynrouteError(
                f"{arrays.name}: no image (an array with 3 or 4 axes: {LAYOUTS}, and at least "
                f"one image) in it; found {listed}"
            )
        if limits.max_examples is not None and count > limits.max_examples:
            raise TooLarge(
                f"{arrays.name} holds {count:,} images, over the limit of "
                f"{limits.max_examples:,} an input"
            )
        return images

    def pieces(self, rows: int | None = None) -> Iterator[Piece]:
        for key, checked in self.images:
            where = self.arrays.where(key)
            opened = self.arrays.header(key)
            if opened is None or opened[0] != checked:
                if opened is not None:
                    opened[1].close()
                raise DynrouteError(f"{where} changed while it was read")
            header, stream = opened
            row_bytes = max(1, header.declared // header.shape[0])
            block = max(1, min(rows or header.shape[0], BLOCK_BYTES // row_bytes))
            start = 0
            for stored in self.arrays.stream(key, header, stream, block):
                images = network_input(stored, where, self.size, self.min_side)
                yield [f"{where}[{start + i}]" for i in range(len(images))], images
                start += len(images)

    def close(self) -> None:
        self.arrays.close()


def open_arrays(source: Input, size: int, limits: InputLimits) -> ArrayReading:
    """An .npy or .npz file or body opened and checked: its size, then every array's
    header, before a value is read."""
    if source.path is not None:
        try:
            status = source.path.stat()
        except OSError as exc:
            raise cannot_read(source.path, exc) from None
        check_regular(source.path, status)
        stored = status.st_size
    else:
        stored = len(source.data or b"")
    if stored > MAX_ARRAY_FILE_BYTES:
        raise TooLarge(
            f"{source.name}: {stored} bytes, more than the limit of {MAX_ARRAY_FILE_BYTES}"
        )
    return ArrayReading(source, size, limits)


NPY = register(
    Format(
        name="npy",
        what="an .npy array",
        suffixes=(".npy",),
        magic=(NPY_MAGIC,),
        media_types=("application/x-npy",),
        one_example=False,
        open=open_arrays,
    )
)
NPZ = register(
    Format(
        name="npz",
        what="an .npz archive of arrays",
        suffixes=(".npz",),
        magic=ZIP_MAGIC,
        media_types=("application/x-npz", "application/zip"),
        one_example=False,
        open=open_arrays,
    )
)
