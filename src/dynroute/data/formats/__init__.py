"""How a user's file or request body becomes the network's input: one module per input
format, in one registry, for training, ``dynroute predict`` and ``dynroute serve`` alike.

A format (``registry.Format``) says how it is recognised (file suffixes, first bytes,
request content types) and how it is opened: ``open`` checks what the input's header
declares (bytes, pixels, examples, layout) against ``InputLimits`` before anything is decoded,
and returns a ``Reading`` whose ``pieces`` decode it, a block at a time, to (N, 3, size,
size) float32 in [0, 1]. ``pixels`` holds what every format shares once it has pixels
(layouts, the resize, the linear or plain conversion). The training readers decode with
the same functions (``images.decode_rgb``, ``pixels.array_images``).

Which format reads an input: the one it declares (a file's suffix; a body's content type
or ``?format=``), else the one its first bytes name, else ``image`` (Pillow recognises
more formats than the magic numbers listed here). A declared format that the first bytes
contradict is refused: ``photo.png`` holding an ``.npy`` array would otherwise be read as
one example where it holds thousands, past what ``predict`` reserved memory for.

The built-in formats: ``images`` (image files, via Pillow) and ``arrays`` (``.npy`` and
``.npz``). Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from dynroute.core.errors import DynrouteError

# The built-in formats, registered as they are imported (a new format: its module here).
from dynroute.data.formats import arrays, images  # noqa: F401
from dynroute.data.formats.registry import (
    FORMATS,
    Format,
    Input,
    InputLimits,
    Piece,
    Reading,
    TooLarge,
    join,
)

__all__ = [
    "FORMATS",
    "Format",
    "Input",
    "InputLimits",
    "Piece",
    "Reading",
    "TooLarge",
    "by_magic",
    "by_suffix",
    "choose",
    "declared_by",
    "file_pieces",
    "holds_one_example",
    "open_input",
    "read_file",
]

#: The format an input that no format recognises is tried as.
FALLBACK = "image"


def by_suffix(name: str | os.PathLike[str]) -> Format | None:
    """The format a file's suffix declares, or None."""
    suffix = Path(name).suffix.lower()
    return next((fmt for fmt in FORMATS.values() if suffix in fmt.suffixes), None)


def by_magic(head: bytes) -> Format | None:
    """The format whose magic number ``head`` starts with, or None."""
    return next(
        (fmt for fmt in FORMATS.values() if any(head.startswith(m) for m in fmt.magic)), None
    )


def declared_by(content_type: str | None = None, name: str | None = None) -> Format | None:
    """The format a request declares: ``name`` (``?format=``) or its content type (one that
    names no format, such as curl's default form type, declares nothing); an unknown
    ``name`` is a ``DynrouteError``."""
    if name is not None:
        if name not in FORMATS:
            raise DynrouteError(
                f"unknown format {name!r}; one of {', '.join(FORMATS)}, or none (the body's "
                "first bytes tell)"
            )
        return FORMATS[name]
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return next((fmt for fmt in FORMATS.values() if media in fmt.media_types), None)


def holds_one_example(path: str | os.PathLike[str]) -> bool:
    """Whether a file is declared (by its suffix) to hold one example: what ``predict``
    reserves memory for before the file is read. An undeclared file may hold many."""
    fmt = by_suffix(path)
    return fmt is not None and fmt.one_example


def choose(source: Input, declared: Format | None, how: str = "its suffix") -> Format:
    """The format that reads ``source``: ``declared`` (by ``how``), unless its first bytes
    name another format (refused); else the one they name, else an image."""
    found = by_magic(source.head())
    if declared is None:
        return found or FORMATS[FALLBACK]
    if found is not None and found.name != declared.name:
        raise DynrouteError(
            f"{source.name}: {how} declares {declared.what}, but its first bytes are those "
            f"of {found.what}"
        )
    return declared


def open_input(
    source: Input,
    size: int,
    limits: InputLimits | None = None,
    declared: Format | None = None,
    how: str = "its suffix",
) -> tuple[Format, Reading]:
    """``source`` opened by its format (``choose``) and checked against ``limits``."""
    fmt = choose(source, declared, how)
    return fmt, fmt.open(source, size, limits or InputLimits())


def file_pieces(path: Path, size: int, rows: int | None = None) -> Iterator[Piece]:
    """One file's examples, at most ``rows`` at a time: names and (n, 3, size, size)
    float32; ``DynrouteError`` if it is unreadable (part-way, for an array found damaged
    in a later block)."""
    source = Input.file(path)
    _, reading = open_input(source, size, declared=by_suffix(path))
    with reading:
        yield from reading.pieces(rows)


def read_file(path: Path, size: int) -> Piece:
    """One file's examples at once: names and (N, 3, size, size) float32."""
    return join(file_pieces(path, size), size)
