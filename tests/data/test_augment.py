"""Augmentation against a naive per-image reference, and the seeded batch loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynroute.core.errors import DynrouteError
from dynroute.data import BatchLoader, DatasetSplit, augment_batch
from dynroute.data.augment import AugmentParams, draw_params, shift_and_flip


def naive(image: torch.Tensor, du: int, dv: int, flip: bool) -> torch.Tensor:
    """Per-image loop: flip, then move pixel (y, x) to (y + dv, x + du); rest = mean."""
    source = image.flip(2) if flip else image
    channels, height, width = image.shape
    out = image.mean(dim=(1, 2))[:, None, None].expand(channels, height, width).clone()
    for y in range(height):
        for x in range(width):
            if 0 <= y - dv < height and 0 <= x - du < width:
                out[:, y, x] = source[:, y - dv, x - du]
    return out


def test_shift_and_flip_matches_naive_reference():
    images = torch.rand(6, 3, 8, 8)
    shifts_x = torch.tensor([0, 3, -4, 8, 2, -1])
    shifts_y = torch.tensor([0, -2, 4, 1, -8, 1])
    flips = torch.tensor([False, True, False, True, True, False])
    out = shift_and_flip(images, AugmentParams(shifts_x, shifts_y, flips))
    for i in range(6):
        expected = naive(images[i], int(shifts_x[i]), int(shifts_y[i]), bool(flips[i]))
        torch.testing.assert_close(out[i], expected)


def test_fill_colour_is_image_mean():
    images = torch.rand(2, 3, 32, 32)
    out = shift_and_flip(
        images, AugmentParams(torch.tensor([4, -4]), torch.tensor([4, 0]), torch.tensor([0, 0]) > 0)
    )
    torch.testing.assert_close(out[0, :, :4, :].mean(dim=(1, 2)), images[0].mean(dim=(1, 2)))
    torch.testing.assert_close(
        out[1, :, :, -4:], images[1].mean(dim=(1, 2))[:, None, None].expand(3, 32, 4)
    )


def test_flips_only_for_mirror_symmetric_classes():
    labels = torch.arange(10).repeat(100)
    mirror = [label >= 5 for label in range(10)]
    params = draw_params(labels, mirror, torch.Generator().manual_seed(0))
    flipped = params.flip
    assert not flipped[labels < 5].any()
    assert 0.4 < flipped[labels >= 5].float().mean() < 0.6
    assert params.shift_x.min() == -4 and params.shift_x.max() == 4
    assert params.shift_y.abs().max() == 4


def test_augment_is_deterministic_per_seed():
    images = torch.rand(16, 3, 32, 32)
    labels = torch.arange(16) % 10
    mirror = [True] * 10
    first = augment_batch(images, labels, mirror, torch.Generator().manual_seed(5))
    second = augment_batch(images, labels, mirror, torch.Generator().manual_seed(5))
    third = augment_batch(images, labels, mirror, torch.Generator().manual_seed(6))
    assert torch.equal(first, second) and not torch.equal(first, third)


def make_split(count: int = 50) -> DatasetSplit:
    images = np.random.default_rng(0).random((count, 3, 32, 32), dtype=np.float32)
    labels = np.arange(count) % 4
    return DatasetSplit(images, labels, ("a", "b", "c", "d"), (False, False, True, True))


def test_loader_batches_and_resume():
    loader = BatchLoader(make_split(), 8, seed=1)
    images, labels = loader.next_batch()
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and images.device.type == "cpu"
    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(3)]
    resumed = BatchLoader(make_split(), 8, seed=99)
    resumed.load_state_dict(state)
    for (a, b), (c, d) in zip(expected, (resumed.next_batch() for _ in range(3)), strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_epoch_mode_visits_every_example_once():
    split = make_split(20)
    loader = BatchLoader(split, 8, augment=False, replacement=False, seed=3)
    assert len(loader) == 3
    seen = torch.cat([loader.next_batch()[0] for _ in range(3)])
    assert seen.shape[0] == 20 and loader.epoch == 0
    originals = {tuple(image.flatten()[:4].tolist()) for image in torch.from_numpy(split.images)}
    assert {tuple(image.flatten()[:4].tolist()) for image in seen} == originals
    state = loader.state_dict()
    after = loader.next_batch()[0]
    assert loader.epoch == 1
    loader.load_state_dict(state)
    assert torch.equal(loader.next_batch()[0], after)


def test_loader_rejects_bad_arguments():
    with pytest.raises(DynrouteError, match="batch size must be at least 1"):
        BatchLoader(make_split(), 0)
