"""Training-time augmentation (docs/method.md §6.3), vectorised over the batch.

Each image is shifted by integers (du, dv) uniform in [-max_shift, max_shift],
uncovered pixels take the image's mean colour (the data is already linear
intensity), and images of mirror-symmetric classes are flipped horizontally with
probability 0.5. One gather per batch does it all, on whatever device the
images live; the random draws come from a CPU generator so results do not
depend on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_MAX_SHIFT = 4
FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class AugmentParams:
    """Per-image draws: horizontal shift du, vertical shift dv, flip flag."""

    shift_x: torch.Tensor
    shift_y: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device) -> AugmentParams:
        return AugmentParams(self.shift_x.to(device), self.shift_y.to(device), self.flip.to(device))


def draw_params(
    labels: torch.Tensor,
    mirror_symmetric: torch.Tensor | Sequence[bool],
    generator: torch.Generator,
    max_shift: int = DEFAULT_MAX_SHIFT,
) -> AugmentParams:
    """Draw shifts for every image and flips only where the label's class allows them."""
    count = len(labels)
    mirror = torch.as_tensor(mirror_symmetric, dtype=torch.bool)
    shifts = torch.randint(-max_shift, max_shift + 1, (2, count), generator=generator)
    coin = torch.rand(count, generator=generator) < FLIP_PROBABILITY
    return AugmentParams(shifts[0], shifts[1], coin & mirror[labels.cpu()])


def shift_and_flip(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply given shifts and flips to (B, C, H, W) images with mean-colour fill.

    Output pixel (y, x) reads input (y - dv, x - du) of the (possibly flipped)
    image. The per-channel image mean is appended as an extra "pixel" at flat
    index H*W, and every read that falls outside the image points there, so a
    single gather does shift, flip and fill without a masked select.
    """
    batch, channels, height, width = images.shape
    pixels = height * width
    params = params.to(images.device)
    flat = images.reshape(batch, channels, pixels)
    source = torch.cat([flat, flat.mean(dim=2, keepdim=True)], dim=2)
    source_y = torch.arange(height, device=images.device) - params.shift_y[:, None]  # (B, H)
    source_x = torch.arange(width, device=images.device) - params.shift_x[:, None]  # (B, W)
    source_x = torch.where(params.flip[:, None], width - 1 - source_x, source_x)
    # Outside rows/columns get offset H*W; any sum >= H*W is then clamped onto the mean.
    row = torch.where((source_y >= 0) & (source_y < height), source_y * width, pixels)
    col = torch.where((source_x >= 0) & (source_x < width), source_x, pixels)
    index = (row[:, :, None] + col[:, None, :]).clamp_(max=pixels)
    index = index.reshape(batch, 1, pixels).expand(batch, channels, pixels)
    return source.gather(2, index).reshape(batch, channels, height, width)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    mirror_symmetric: torch.Tensor | Sequence[bool],
    generator: torch.Generator,
    max_shift: int = DEFAULT_MAX_SHIFT,
) -> torch.Tensor:
    """Randomly shift (mean fill) and, for mirror-symmetric classes, flip a batch."""
    params = draw_params(labels, mirror_symmetric, generator, max_shift)
    return shift_and_flip(images, params)
