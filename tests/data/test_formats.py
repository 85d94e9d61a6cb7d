"""The input formats (``dynroute.data.formats``): one registry that recognises a file or a
body, one reading per format, the same input from a file and from its bytes, and every
limit checked from the header before anything is decoded."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynroute.core.errors import DynrouteError
from dynroute.data import formats
from dynroute.data.formats import FORMATS, Input, InputLimits, TooLarge, registry
from dynroute.data.formats.pixels import array_images, to_linear

SIZE = 16


def _png(pixels: np.ndarray, mode: str | None = None, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, kind)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def samples() -> dict[str, bytes]:
    """A few inputs of every built-in format, by file name."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    many = rng.integers(0, 256, (3, 12, 9, 3), dtype=np.uint8)
    return {
        "rgb.png": _png(rgb),
        "grey.png": _png(rgb, "L"),
        "alpha.png": _png(rgb, "RGBA"),
        "photo.jpg": _png(rgb, kind="JPEG"),
        "nhw.npy": _npy(rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)),
        "nhwc.npy": _npy(many),
        "nchw.npy": _npy(many.transpose(0, 3, 1, 2).astype(np.float32) / 255),
        "mixed.npz": _npz(x=many, grey=many[..., 0], labels=np.arange(3)),
    }


def test_every_format_is_found_by_its_suffix_its_first_bytes_and_its_content_type() -> None:
    assert set(FORMATS) == {"image", "npy", "npz"}
    for fmt in FORMATS.values():
        for suffix in fmt.suffixes:
            assert formats.by_suffix(f"a/b{suffix.upper()}") is fmt
        for magic in fmt.magic:
            assert formats.by_magic(magic + b"rest") is fmt
        for media in fmt.media_types:
            assert formats.declared_by(f"{media}; charset=x") is fmt
        assert formats.declared_by(name=fmt.name) is fmt
    assert formats.by_suffix("notes.txt") is None and formats.by_magic(b"hello") is None
    assert formats.declared_by("application/x-www-form-urlencoded") is None  # curl's default
    with pytest.raises(DynrouteError, match="unknown format 'png'; one of npy, npz, image"):
        formats.declared_by(name="png")
    assert formats.holds_one_example("a.PNG") and not formats.holds_one_example("a.npy")
    assert not formats.holds_one_example("a.tif")  # undeclared: it may hold many


def test_a_format_that_overlaps_another_is_refused() -> None:
    image = FORMATS["image"]
    for clash in ({"suffixes": (".npy",)}, {"magic": (b"\x93NUM",)}, {"name": "npz"}):
        fields = {**image.__dict__, "name": "other", "suffixes": (), "magic": (), **clash}
        fields["media_types"] = ()
        with pytest.raises(DynrouteError, match="overlaps"):
            registry.register(registry.Format(**fields))
    assert set(FORMATS) == {"image", "npy", "npz"}


def test_a_new_format_is_one_module_registered() -> None:
    """What a new format takes: a ``Format`` with its ``open``; nothing else changes, and
    files and bodies of it are read at once."""

    class Plain(formats.Reading):
        """A toy format: the text ``PLAIN v`` is one grey image of value v."""

        def __init__(self, source: Input, size: int, limits: InputLimits) -> None:
            self.value, self.name, self.size = int(source.read(64)[6:]), source.name, size
            self.count, self.cost = 1, 3 * size * size * 4

        def pieces(self, rows: int | None = None) -> Iterator[formats.Piece]:
            grey = np.full((1, self.size, self.size), self.value, np.uint8)
            yield [self.name], to_linear(array_images(grey, self.name, self.size)[0])

    plain = registry.Format("plain", "a plain file", (".plain",), (b"PLAIN ",), (), True, Plain)
    registry.register(plain)
    try:
        source = Input.body(b"PLAIN 255", "body")
        fmt, reading = formats.open_input(source, SIZE)
        assert fmt is plain and reading.whole(SIZE)[1].min() == 1.0
        assert formats.holds_one_example("x.plain")
    finally:
        del FORMATS["plain"]


@pytest.mark.parametrize("name", list(samples()))
def test_a_file_and_its_bytes_as_a_body_are_the_same_input(tmp_path: Path, name: str) -> None:
    """What ``predict`` reads from a file, ``serve`` reads from its bytes: the same names
    (the body named like the file), the same values."""
    data = samples()[name]
    path = tmp_path / name
    path.write_bytes(data)
    names, images = formats.read_file(path, SIZE)
    fmt, reading = formats.open_input(Input.body(data, str(path)), SIZE)
    with reading:
        assert reading.count == len(names) and reading.cost >= images.nbytes
        body_names, body_images = reading.whole(SIZE)
    assert fmt is formats.by_suffix(name)  # undeclared: its first bytes tell
    assert body_names == names and images.dtype == np.float32
    assert images.shape == (len(names), 3, SIZE, SIZE) and 0 <= images.min() <= images.max() <= 1
    np.testing.assert_array_equal(body_images, images)


def test_one_set_of_pixels_is_one_input_in_every_format(tmp_path: Path) -> None:
    """An image file and an array of its pixels, in any layout, resize and convert alike
    (8-bit pixels gamma-decoded to linear intensity, float pixels kept)."""
    rgb = np.random.default_rng(1).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    inputs = {
        "rgb.png": _png(rgb),
        "rgb.npy": _npy(rgb[None]),
        "rgb-nchw.npz": _npz(x=rgb.transpose(2, 0, 1)[None]),
        "grey.png": _png(grey),
        "grey.npy": _npy(grey[None]),
        "grey-channel.npy": _npy(grey[None, ..., None]),
    }
    read = {}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
        read[name] = formats.read_file(tmp_path / name, SIZE)[1]
    for name in ("rgb.npy", "rgb-nchw.npz"):
        np.testing.assert_array_equal(read[name], read["rgb.png"])
    for name in ("grey.npy", "grey-channel.npy"):
        np.testing.assert_array_equal(read[name], read["grey.png"])
    at_size = rgb[:SIZE, :SIZE]
    (tmp_path / "floats.npy").write_bytes(_npy(at_size[None].astype(np.float32) / 255))
    floats = formats.read_file(tmp_path / "floats.npy", SIZE)[1]
    np.testing.assert_allclose(floats[0], at_size.transpose(2, 0, 1) / 255, rtol=1e-6)  # plain
    (tmp_path / "bytes.npy").write_bytes(_npy(at_size[None]))
    linear = formats.read_file(tmp_path / "bytes.npy", SIZE)[1]
    np.testing.assert_allclose(linear[0], (at_size.transpose(2, 0, 1) / 255) ** 2.2, rtol=1e-5)


def test_a_suffix_its_first_bytes_contradict_is_refused(tmp_path: Path) -> None:
    """``photo.png`` holding an array would be read as one example where it holds many;
    an unknown suffix is read by what its first bytes say."""
    data = samples()
    (tmp_path / "photo.png").write_bytes(data["nhw.npy"])
    with pytest.raises(DynrouteError, match="its suffix declares an image file, but its first "
                       "bytes are those of an .npy array"):  # fmt: skip
        formats.read_file(tmp_path / "photo.png", SIZE)
    (tmp_path / "arrays.npy").write_bytes(data["rgb.png"])
    with pytest.raises(DynrouteError, match="declares an .npy array, but .* an image file"):
        formats.read_file(tmp_path / "arrays.npy", SIZE)
    (tmp_path / "arrays.data").write_bytes(data["mixed.npz"])
    assert len(formats.read_file(tmp_path / "arrays.data", SIZE)[0]) == 6
    body = Input.body(data["nhw.npy"], "request")
    with pytest.raises(DynrouteError, match="request: the body declares an image file"):
        formats.open_input(body, SIZE, declared=FORMATS["image"], how="the body")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DynrouteError, match="not an image file Pillow can identify"):
        formats.read_file(tmp_path / "notes.txt", SIZE)


def test_limits_are_checked_from_the_header_before_decoding() -> None:
    """Pixels and examples are refused as ``TooLarge`` (a server's 413) before a value is
    read or a pixel decoded; a tiny image is still classified (training wants more)."""
    data = samples()
    small = InputLimits(max_pixels=100)
    for name in ("rgb.png", "photo.jpg", "nhwc.npy", "mixed.npz"):
        with pytest.raises(TooLarge, match="more than the limit of 100"):
            formats.open_input(Input.body(data[name], name), SIZE, small)
    with pytest.raises(TooLarge, match="holds 6 images, over the limit of 5"):
        formats.open_input(
            Input.body(data["mixed.npz"], "x.npz"), SIZE, InputLimits(max_examples=5)
        )
    _, reading = formats.open_input(Input.body(data["mixed.npz"], "x.npz"), SIZE)
    assert reading.count == 6 and reading.cost >= 6 * 3 * SIZE * SIZE * 4
    tiny = _npy(np.zeros((2, 1, 1), np.uint8))
    assert formats.open_input(Input.body(tiny, "t.npy"), SIZE)[1].whole(SIZE)[1].shape[0] == 2
    with pytest.raises(DynrouteError, match="too small"):
        formats.open_input(Input.body(tiny, "t.npy"), SIZE, InputLimits(min_side=8))
    with pytest.raises(TooLarge, match="holds 10 bytes, more than the limit"):
        Input.body(b"0123456789", "b").read(9)


def test_hostile_bodies_are_one_line_each() -> None:
    """A JPEG of millions of markers, pickled objects, a forged or damaged array: each a
    ``DynrouteError`` naming the body, never a decoder's own exception or an unpickle."""
    from helpers.delivery import jpeg_of_many_comments

    forged = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        forged, {"descr": "|u1", "fortran_order": False, "shape": (10**8, 32, 32)}
    )
    cases = {
        "pieces": (jpeg_of_many_comments(300_000), "far more pieces than its size warrants"),
        "objects": (_npy(np.array([{"a": 1}], dtype=object)), "never unpickled"),
        "forged": (forged.getvalue() + b"\0" * 64, "declares shape (100000000, 32, 32)"),
        "short": (_npy(np.zeros((4, 8, 8), np.uint8))[:-10], "ends after"),
        "nan": (_npy(np.full((2, 8, 8), np.nan, np.float32)), "NaN"),
        "wide": (_npy(np.zeros((2, 8, 8), np.int32)), "int32 pixels; expected uint8"),
        "nothing": (_npz(labels=np.arange(3)), "no image"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(DynrouteError, match=re.escape(words)) as caught:
            _, reading = formats.open_input(Input.body(data, name), SIZE)
            reading.whole(SIZE)
        assert str(caught.value).startswith(name) and "\n" not in str(caught.value)
