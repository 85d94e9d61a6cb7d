"""What every input format shares once it has pixels: array layouts, the one resize, and
the linear or plain conversion to network input.

Image files, ``.npy`` and ``.npz`` arrays, a training tree and a request body all end
here, so that the same pixels are the same input wherever they came from:

- layouts: NHW (grey), NHWC or NCHW, told apart by the axis of 1 or 3 channels (a shape
  where both axes could be is refused as ambiguous); grey is repeated to RGB;
- resizing: Pillow's bilinear filter (antialiased when shrinking), stretched to square,
  one channel at a time for arrays so uint8 and float pixels resize alike;
- values: uint8 pixels are gamma-decoded to linear intensity, (x / 255) ** 2.2, like
  CIFAR's ("linear"); float pixels are taken to be intensities in [0, 1] already and kept
  ("plain").

Torch-free: ``dynroute predict`` and ``dynroute serve`` run without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from dynroute.core.errors import DynrouteError

GAMMA = 2.2
_GAMMA_TABLE = ((np.arange(256, dtype=np.float64) / 255.0) ** GAMMA).astype(np.float32)
#: The one resampling filter for user pixels: Pillow's bilinear widens with the scale
#: factor, so shrinking is antialiased.
RESAMPLE = Image.Resampling.BILINEAR
#: Channel counts an image may have: grey or RGB.
CHANNELS = (1, 3)
#: Float pixels may stray this far outside [0, 1] (rounding); they are then clipped.
FLOAT_TOLERANCE = 1e-3
LAYOUTS = "(N, H, W, C), (N, C, H, W) or (N, H, W)"


def gamma_decode(images: np.ndarray) -> np.ndarray:
    """uint8 sRGB-ish pixels -> linear intensity (x/255)^2.2, via a lookup table."""
    return _GAMMA_TABLE[images]


def to_linear(images: np.ndarray) -> np.ndarray:
    """Network input from decoded pixels: uint8 gamma-decoded ("linear"), float pixels
    (already intensities in [0, 1]) kept as float32 ("plain")."""
    if images.dtype == np.uint8:
        return gamma_decode(images)
    return np.asarray(images, dtype=np.float32)


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """The one resize of user pixels (files and arrays alike): bilinear, stretched to square."""
    return image.resize((size, size), RESAMPLE)


def channel_layout(shape: tuple[int, ...], where: str) -> str:
    """NHW, NHWC or NCHW, from which axis has 1 or 3 entries; ambiguous shapes are refused."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise DynrouteError(f"{where} has shape {shape}; expected images as {LAYOUTS}")
    first, last = shape[1] in CHANNELS, shape[3] in CHANNELS
    if first and last:
        raise DynrouteError(
            f"{where} has shape {shape}: ambiguous layout, axis 1 and axis 3 could both hold the "
            "channels; store NHWC or NCHW images whose height and width are not 1 or 3"
        )
    if not first and not last:
        raise DynrouteError(
            f"{where} has shape {shape}: no channel axis of size 1 or 3 (NHWC or NCHW); "
            "only grayscale and RGB images are supported"
        )
    return "NHWC" if last else "NCHW"


def image_sides(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """Height and width of the images of an array of ``shape`` in ``layout``."""
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def check_images(shape: tuple[int, ...], dtype: Any, where: str, min_side: int) -> str:
    """The layout of an array of images of ``shape`` and ``dtype``, checked before a value
    is read: 3 or 4 axes, grey or RGB, sides of at least ``min_side``, uint8 or float."""
    layout = channel_layout(shape, where)
    height, width = image_sides(shape, layout)
    if min(height, width) < min_side:
        raise DynrouteError(
            f"{where}: images are {width}x{height} pixels, too small "
            f"(at least {min_side} on a side)"
        )
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) and dtype != np.uint8:
        raise DynrouteError(f"{where} holds {dtype} pixels; expected uint8 (0-255) or float (0-1)")
    return layout


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """NHWC uint8 or float32 -> (N, size, size, C), one channel at a time through Pillow."""
    count, height, width, channels = images.shape
    if (height, width) == (size, size):
        return images
    out = np.empty((count, size, size, channels), dtype=images.dtype)
    for index in range(count):
        for channel in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(images[index, :, :, channel]))
            out[index, :, :, channel] = np.asarray(resize_square(plane, size))
    return out


def array_images(
    array: np.ndarray, where: str, size: int, min_side: int = 1
) -> tuple[np.ndarray, str]:
    """A user's image array (NHWC, NCHW or NHW; uint8, or float in [0, 1]) as (N, 3, size,
    size) in its dtype class (uint8, or float32 clipped to [0, 1]), and the layout found;
    ``where`` names it in errors."""
    layout = check_images(array.shape, array.dtype, where, min_side)
    if layout == "NHW":
        nhwc = array[..., None]
    elif layout == "NCHW":
        nhwc = array.transpose(0, 2, 3, 1)
    else:
        nhwc = array
    if np.issubdtype(array.dtype, np.floating):
        nhwc = np.asarray(nhwc, dtype=np.float32)
        if not np.isfinite(nhwc).all():
            raise DynrouteError(
                f"{where} holds NaN or infinite pixels; float images hold intensities in [0, 1]"
            )
        low, high = (float(nhwc.min()), float(nhwc.max())) if nhwc.size else (0.0, 0.0)
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise DynrouteError(
                f"{where}: float pixels range from {low:g} to {high:g}; float images must lie in "
                "[0, 1] (store 8-bit images as uint8, or divide by 255)"
            )
        nhwc = np.clip(nhwc, 0.0, 1.0)
    resized = _resize(np.asarray(nhwc), size)
    if resized.shape[3] == 1:
        resized = np.repeat(resized, 3, axis=3)
    return np.ascontiguousarray(resized.transpose(0, 3, 1, 2)), layout


def network_input(array: np.ndarray, where: str, size: int, min_side: int = 1) -> np.ndarray:
    """An image array as (N, 3, size, size) float32 network input: laid out and resized
    (``array_images``), then linear or plain (``to_linear``)."""
    return to_linear(array_images(array, where, size, min_side)[0])
