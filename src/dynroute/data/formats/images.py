"""Image files (PNG, JPEG, BMP, GIF, WebP, TIFF, ... whatever Pillow opens): one example
each, decoded the one way a training tree, ``predict`` and ``serve`` all decode them.

Turned upright by their EXIF orientation, made RGB (grey repeated, alpha dropped, palettes
expanded; 16-bit grey rounded to 8 bits where ``wide``), resized to the network's square
size with Pillow's bilinear filter (stretched, not cropped), then gamma-decoded to linear
intensity (``pixels.to_linear``).

Hostile files stay bounded: the file's bytes are bounded before they are read (a file by
``MAX_IMAGE_FILE_BYTES``, a body by the server), its pixels are checked from its header
before it is decoded (after a JPEG's reduced-scale decoding, which reads the fewest pixels
that give the size asked for), and Pillow reads it through ``CappedStream``: a file built
of many tiny chunks (a PNG of 800,000 empty chunks, a JPEG of millions of comment markers)
would keep a decoder busy for seconds of pure Python, and is refused after a fraction of
one instead.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dynroute.core.errors import DynrouteError
from dynroute.data.formats.pixels import resize_square, to_linear
from dynroute.data.formats.registry import (
    Format,
    Input,
    InputLimits,
    Piece,
    Reading,
    TooLarge,
    register,
)
from dynroute.io.gate import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS
from dynroute.nn.registry import MIN_IMAGE_SIZE

#: Suffixes of image files: what a training tree takes as images, and what ``predict``
#: expects to hold one example. Other files are recognised by their first bytes, and
#: anything unrecognised is tried as an image too (Pillow reads more than these).
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
#: Reads Pillow may make of a file of N bytes: READS_FREE + N // BYTES_PER_READ. Real files
#: take hundreds of bytes a read and more (a 20 MB PNG: 800 reads); hostile ones a few.
READS_FREE = 4096
BYTES_PER_READ = 128


class TooManyReads(OSError):
    """A file that takes far more reads to open or decode than its size warrants."""


class CappedStream(io.BytesIO):
    """A file's bytes for Pillow to read, refusing reads past ``READS_FREE + len //
    BYTES_PER_READ`` (an OSError, which Pillow reports as an unreadable file)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads_left = READS_FREE + len(data) // BYTES_PER_READ

    def _count(self) -> None:
        self.reads_left -= 1
        if self.reads_left < 0:
            raise TooManyReads(
                "the file is made of far more pieces than its size warrants (refused as "
                "hostile before it kept a decoder busy)"
            )

    def read(self, size: int | None = -1) -> bytes:
        self._count()
        return super().read(size)

    def readline(self, size: int | None = -1) -> bytes:
        self._count()
        return super().readline(size)

    def readinto(self, buffer: Any) -> int:
        self._count()
        return super().readinto(buffer)


#: What decoding a file can raise besides a ``DynrouteError``: the file is not an image,
#: is truncated, or too large to decode safely.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


@contextlib.contextmanager
def decoding(name: str) -> Iterator[None]:
    """A decoder's own failure on ``name`` as one ``DynrouteError`` naming it."""
    try:
        yield
    except UnidentifiedImageError:
        raise DynrouteError(
            f"{name}: cannot decode image: not an image file Pillow can identify"
        ) from None
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"{name}: cannot decode image: too many pixels ({exc})") from None
    except DECODE_ERRORS as exc:
        raise DynrouteError(f"{name}: cannot decode image ({exc})") from exc


def _wide(image: Image.Image) -> bool:
    """Whether its pixels are integers or floats wider than 8 bits."""
    return image.mode in ("I", "F") or image.mode.startswith("I;")


@dataclass(frozen=True)
class Checks:
    """What an image must be before it is decoded: exactly the size asked for (a training
    copy, ``resize`` False) or any size of at least ``min_size`` a side; 16-bit grey only
    where ``wide``; at most ``max_pixels``. The defaults are training's."""

    resize: bool = True
    min_size: int = MIN_IMAGE_SIZE
    wide: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS

    @classmethod
    def of(cls, limits: InputLimits) -> Checks:
        """A user's file or body (``predict``, ``serve``): any size, 16-bit grey read too."""
        return cls(min_size=limits.min_side, wide=True, max_pixels=limits.max_pixels)


def prepare(image: Image.Image, name: str, size: int, checks: Checks) -> None:
    """Check an opened image before it is decoded, from its header (``checks``), a JPEG set
    first to decode at the smallest scale that still gives ``size``."""
    width, height = image.size
    if not checks.resize:
        if image.size != (size, size):
            raise DynrouteError(f"{name}: image is {width}x{height}, expected {size}x{size}")
        return
    if min(width, height) < checks.min_size:
        raise DynrouteError(
            f"{name}: image is {width}x{height} pixels, too small (at least {checks.min_size} "
            "on a side)"
        )
    if _wide(image):
        if not checks.wide or image.mode == "F":
            raise DynrouteError(
                f"{name}: {image.mode} pixels (16-bit or floating point) are not supported; "
                "save the image with 8 bits per channel"
            )
    else:
        image.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale, >= size
    width, height = image.size
    if width * height > checks.max_pixels:
        raise TooLarge(
            f"{name}: image is {width}x{height} = {width * height} pixels, more than the "
            f"limit of {checks.max_pixels:,}; shrink it"
        )


def decode_cost(image: Image.Image) -> int:
    """Bytes decoding a prepared image takes: its pixels as Pillow holds them, doubled for
    the conversion."""
    width, height = image.size
    depth = 4 if image.mode in ("I", "F") else 2 if image.mode.startswith("I;16") else 1
    return 2 * width * height * max(3, len(image.getbands())) * depth


def _eight_bit(image: Image.Image, name: str) -> Image.Image:
    """A 16-bit grayscale image as 8-bit grayscale (x / 257, rounded), in integers (no
    float64 detour: 4 bytes a pixel at most). 32-bit values beyond 16 bits are refused, not
    clipped to white."""
    pixels = np.asarray(image)
    if pixels.dtype.itemsize > 2 and (pixels.max(initial=0) > 65535 or pixels.min(initial=0) < 0):
        raise DynrouteError(
            f"{name}: 32-bit integer pixels beyond 16 bits are not supported; save the image "
            "with 8 or 16 bits per channel"
        )
    scaled = (pixels.astype(np.uint32) + 128) // 257
    return Image.fromarray(scaled.astype(np.uint8), "L")


def convert(image: Image.Image, name: str, size: int, resize: bool = True) -> np.ndarray:
    """A prepared image decoded: (size, size, 3) uint8 RGB, upright and resized (a training
    copy that must already be ``size`` square, ``resize`` False, is taken as it is)."""
    if not resize:
        rgb = image.convert("RGB")
    else:
        upright = ImageOps.exif_transpose(image)  # camera photos as they are displayed
        if _wide(upright):
            upright = _eight_bit(upright, name)
        rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
        if rgb.size != (size, size):
            rgb = resize_square(rgb, size)
    return np.frombuffer(rgb.tobytes(), dtype=np.uint8).reshape(size, size, 3)


def open_image(data: bytes, name: str) -> Image.Image:
    """A file's bytes opened by Pillow (its header read, nothing decoded), through a
    ``CappedStream``."""
    with decoding(name):
        return Image.open(CappedStream(data))


def decode_rgb(
    source: bytes | Image.Image, name: str, size: int, checks: Checks = Checks()
) -> np.ndarray:
    """One image file's bytes (or the file opened by Pillow, handed over) as (size, size, 3)
    uint8 RGB: ``prepare``'s checks, then ``convert``. Any failure is a ``DynrouteError``
    naming ``name``."""
    image = open_image(source, name) if isinstance(source, bytes) else source
    with image, decoding(name):
        prepare(image, name, size, checks)
        return convert(image, name, size, checks.resize)


def read_image_bytes(blob: bytes | Image.Image, name: str, size: int) -> np.ndarray:
    """One image file's bytes (or the file opened by Pillow, handed over) as (3, size, size)
    float32 network input, as ``predict`` and ``serve`` read it."""
    rgb = decode_rgb(blob, name, size, Checks.of(InputLimits()))
    return to_linear(rgb.transpose(2, 0, 1))


class ImageReading(Reading):
    """One image file, opened and checked: decoding it is its one piece."""

    def __init__(self, image: Image.Image, name: str, size: int) -> None:
        self.image, self.name, self.size = image, name, size
        self.count, self.cost = 1, decode_cost(image)

    def pieces(self, rows: int | None = None) -> Iterator[Piece]:
        with self.image, decoding(self.name):
            rgb = convert(self.image, self.name, self.size)
        yield [self.name], to_linear(rgb.transpose(2, 0, 1))[None]

    def close(self) -> None:
        self.image.close()


def open_input(source: Input, size: int, limits: InputLimits) -> ImageReading:
    """An image file or body opened and checked against ``limits``: its bytes, then its
    header's pixels, before anything is decoded."""
    image = open_image(source.read(MAX_IMAGE_FILE_BYTES), source.name)
    try:
        with decoding(source.name):
            prepare(image, source.name, size, Checks.of(limits))
    except BaseException:
        image.close()
        raise
    return ImageReading(image, source.name, size)


FORMAT = register(
    Format(
        name="image",
        what="an image file",
        suffixes=SUFFIXES,
        magic=MAGIC,
        media_types=(
            "image/png",
            "image/jpeg",
            "image/gif",
            "image/bmp",
            "image/webp",
            "image/tiff",
        ),  # fmt: skip
        one_example=True,
        open=open_input,
    )
)
