"""The multi-scale column's 2x2 pooling: fast strided form at inference, kernels in training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynroute.nn.multiscale import (
    STRIDED_POOL_MIN_ELEMENTS,
    ImagePyramid,
    avg_pool_2x2,
    max_pool_2x2,
)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 64])
def test_inference_pooling_equals_the_kernels(channels_last: bool, batch: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 16, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert (x.numel() >= STRIDED_POOL_MIN_ELEMENTS) == (batch == 64)  # both paths run
    with torch.inference_mode():
        pooled_max, pooled_avg = max_pool_2x2(x), avg_pool_2x2(x)
    assert torch.equal(pooled_max, F.max_pool2d(x, 2))
    torch.testing.assert_close(pooled_avg, F.avg_pool2d(x, 2))
    # The layout carries through, so the next convolution sees what it expects.
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert pooled_max.is_contiguous(memory_format=layout)
    assert pooled_avg.is_contiguous(memory_format=layout)


def test_training_pooling_keeps_the_kernel_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 16, 32, 32, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    (max_pool_2x2(x).square().sum() + avg_pool_2x2(x).sum()).backward()
    (F.max_pool2d(reference, 2).square().sum() + F.avg_pool2d(reference, 2).sum()).backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_odd_maps_fall_back_to_the_kernels() -> None:
    x = torch.randn(128, 16, 33, 31)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))
        torch.testing.assert_close(avg_pool_2x2(x), F.avg_pool2d(x, 2))


def test_pyramid_halves_three_times() -> None:
    x = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        levels = ImagePyramid()(x)
    assert [level.shape[-1] for level in levels] == [32, 16, 8, 4]
    torch.testing.assert_close(levels[3], F.avg_pool2d(x, 8))
