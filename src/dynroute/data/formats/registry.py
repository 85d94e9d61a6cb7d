"""What an input format is, what it reads from, and the registry that finds one.

A format module (``images``, ``arrays``) describes itself with a ``Format`` and registers
it here; ``dynroute.data.formats`` imports the built-in ones and chooses among them. This
module imports none of them, so a format module can import it without a cycle.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.io import gate

#: One piece of an input's examples: their names, and (n, 3, size, size) float32.
Piece = tuple[list[str], np.ndarray]
#: Bytes of an input read to recognise its format by its first bytes.
HEAD_BYTES = 16


class TooLarge(DynrouteError):
    """An input over one of its limits (pixels, examples, bytes): a server answers 413, where
    any other problem of an input is a 400."""


@dataclass(frozen=True)
class InputLimits:
    """What reading one input may take, each checked from its header before anything is
    decoded. ``predict`` reads files with the defaults; ``serve`` sets its options'."""

    #: Pixels one image may have (after a JPEG's reduced-scale decoding).
    max_pixels: int = gate.MAX_IMAGE_PIXELS
    #: Examples one input may hold (None: any number, read a block at a time).
    max_examples: int | None = None
    #: Smallest side an image may have: a user's file is classified however small it is
    #: (it is upscaled); training asks for more.
    min_side: int = 1


@dataclass(frozen=True)
class Input:
    """A user's file or a request body, and the name its examples and messages carry."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def file(cls, path: str | os.PathLike[str]) -> Input:
        return cls(str(path), path=Path(path))

    @classmethod
    def body(cls, data: bytes, name: str) -> Input:
        return cls(name, data=data)

    def open(self) -> tuple[IO[bytes], int]:
        """A stream of its bytes from the start, and how many it holds: a file through the
        gate (a regular file only, its size as its status gives it), a body in memory."""
        if self.path is None:
            assert self.data is not None
            return io.BytesIO(self.data), len(self.data)
        handle = gate.open_regular(self.path)
        return handle, os.fstat(handle.fileno()).st_size

    def head(self) -> bytes:
        """Its first ``HEAD_BYTES`` bytes (fewer if it is shorter), to recognise its format."""
        if self.path is None:
            assert self.data is not None
            return self.data[:HEAD_BYTES]
        handle, size = self.open()
        with handle:
            try:
                return handle.read(min(size, HEAD_BYTES))
            except OSError as exc:
                raise gate.cannot_read(self.path, exc) from exc

    def read(self, limit: int) -> bytes:
        """All its bytes, refused before reading if it holds more than ``limit`` (a file
        through ``gate.read_bytes``)."""
        if self.path is not None:
            return gate.read_bytes(self.path, limit)
        assert self.data is not None
        if len(self.data) > limit:
            raise TooLarge(
                f"{self.name} holds {len(self.data)} bytes, more than the limit of {limit}"
            )
        return self.data


class Reading(ABC):
    """An input opened and its header checked against its limits; nothing decoded yet.

    ``count``: the examples it holds; ``cost``: the bytes of memory decoding it whole takes
    at most, which a server holds of its decode budget first."""

    count: int
    cost: int

    @abstractmethod
    def pieces(self, rows: int | None = None) -> Iterator[Piece]:
        """Its examples in order, at most ``rows`` at a time (None: as the format reads them),
        each decoded when it is asked for."""

    def close(self) -> None:
        return None

    def whole(self, size: int) -> Piece:
        """Every example at once: names and (N, 3, size, size) float32."""
        return join(self.pieces(), size)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def join(pieces: Iterator[Piece], size: int) -> Piece:
    """Pieces as one: their names, and their images concatenated."""
    names: list[str] = []
    images = []
    for piece_names, piece_images in pieces:
        names += piece_names
        images.append(piece_images)
    if not images:
        return names, np.empty((0, 3, size, size), np.float32)
    return names, images[0] if len(images) == 1 else np.concatenate(images)


@dataclass(frozen=True)
class Format:
    """One input format: how it is recognised and how it is opened.

    ``open(input, size, limits)`` reads what it must to check the input against ``limits``
    (a header, not the values), raising ``DynrouteError`` naming ``input.name`` (or
    ``TooLarge``), and returns a ``Reading`` of (N, 3, size, size) float32 examples."""

    #: Its name: what ``?format=`` says, and messages.
    name: str
    #: What it is, in a few words ("an .npy array").
    what: str
    #: File suffixes that declare it (lower case, with the dot).
    suffixes: tuple[str, ...]
    #: First bytes that are its own (its magic numbers).
    magic: tuple[bytes, ...]
    #: Content types of a request body that declare it.
    media_types: tuple[str, ...]
    #: Whether an input holds one example (an image file) or many (an array file).
    one_example: bool
    open: Callable[[Input, int, InputLimits], Reading]


#: The formats, by name, in the order registered.
FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the formats; its suffixes, magic numbers and media types must be its
    own, or one input could be read two ways."""
    for other in FORMATS.values():
        shared = (
            set(fmt.suffixes) & set(other.suffixes)
            or set(fmt.media_types) & set(other.media_types)
            or any(a.startswith(b) or b.startswith(a) for a in fmt.magic for b in other.magic)
        )
        if other.name == fmt.name or shared:
            raise DynrouteError(f"input format {fmt.name!r} overlaps {other.name!r}")
    FORMATS[fmt.name] = fmt
    return fmt
