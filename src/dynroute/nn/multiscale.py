"""The paper's multi-scale column (Fig. 3) and its image pyramid.

A column works on the k coarsest scales of its input pyramid. At each scale
its output is ``conv3x3(input) + conv3x3(maxpool2x2(output at the next finer
scale)) + bias`` followed by batch norm and ReLU. The two convolutions are run
as one convolution over the concatenated channels: the same arithmetic and
MACs, one kernel launch instead of two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dynroute.nn.heads import BN_EPS, BN_MOMENTUM, init_weights

#: Output channels per scale of the eight columns, fine to coarse (paper figure 3;
#: docs/method.md §2).
COLUMN_CHANNELS: list[list[int]] = [
    [16, 16, 16, 16],
    [16, 16, 16, 16],
    [32, 32, 32],
    [32, 32, 32],
    [64, 64],
    [64, 64],
    [128],
    [128],
]
PYRAMID_SCALES = 4
#: Below this many elements a pooling call is launch-bound: one kernel beats four views.
STRIDED_POOL_MIN_ELEMENTS = 1 << 16


def _strided_pool_applies(x: torch.Tensor) -> bool:
    """Whether 2x2 pooling should use strided views (inference on large, even maps).

    On channels-last maps the max (or sum) of strided views is 1.5-2.5x faster
    than the pooling kernels, but its backward is ~10x slower, so training keeps
    the kernels; tiny batches keep them too (fewer launches).
    """
    return (
        not torch.is_grad_enabled()
        and x.numel() >= STRIDED_POOL_MIN_ELEMENTS
        and x.shape[-1] % 2 == 0
        and x.shape[-2] % 2 == 0
    )


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)``, as strided maxima where that is faster (same values)."""
    if not _strided_pool_applies(x):
        return F.max_pool2d(x, 2)
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, as strided sums where that is faster (equal up to rounding)."""
    if not _strided_pool_applies(x):
        return F.avg_pool2d(x, 2)
    rows = x[:, :, 0::2] + x[:, :, 1::2]
    return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)


class ImagePyramid(nn.Module):
    """Image at 32, 16, 8, 4 px. Bilinear halving equals 2x2 average pooling."""

    def __init__(self, n_scales: int = PYRAMID_SCALES) -> None:
        super().__init__()
        self.n_scales = n_scales

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for _ in range(self.n_scales - 1):
            levels.append(avg_pool_2x2(levels[-1]))
        return levels


class MultiScaleColumn(nn.Module):
    """One column: per-scale conv plus pooled cross-scale conv, BN, ReLU."""

    def __init__(self, in_channels: list[int], out_channels: list[int]) -> None:
        super().__init__()
        if len(out_channels) > len(in_channels):
            raise ValueError("a column cannot have more scales than its input")
        self.in_channels = list(in_channels[-len(out_channels) :])
        self.out_channels = list(out_channels)
        convs, norms = [], []
        for s, (c_in, c_out) in enumerate(zip(self.in_channels, self.out_channels, strict=True)):
            c_prev = self.out_channels[s - 1] if s > 0 else 0
            convs.append(nn.Conv2d(c_in + c_prev, c_out, 3, padding=1))
            norms.append(nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        init_weights(self)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = inputs[-len(self.convs) :]
        outputs: list[torch.Tensor] = []
        for s, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = inputs[s]
            if s > 0:
                x = torch.cat([x, max_pool_2x2(outputs[-1])], dim=1)
            outputs.append(F.relu(norm(conv(x)), inplace=True))
        return outputs

    def fold_batchnorm(self) -> int:
        """Fold each (eval-mode) batch norm into its convolution; returns how many."""
        folded = 0
        for s, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if isinstance(norm, nn.BatchNorm2d):
                self.convs[s] = fuse_conv_bn_eval(conv, norm)
                self.norms[s] = nn.Identity()
                folded += 1
        return folded

    def export_form(self) -> SplitColumn:
        """The same column with each scale's convolution run as two (``SplitColumn``)."""
        return SplitColumn(self)


class SplitColumn(nn.Module):
    """A ``MultiScaleColumn`` whose per-scale convolution is split back into its two parts:
    one over the scale's input, one (without bias) over the pooled finer output, summed.

    The same function up to float rounding, built for ONNX export (``dynroute.delivery.export``
    swaps every column for it): onnxruntime's blocked-layout convolutions need channel
    counts that are multiples of 8, which the joint 3 + 16 = 19 input channels of the first
    column are not, and the split first column runs about 35 % faster there.
    """

    def __init__(self, column: MultiScaleColumn) -> None:
        super().__init__()
        own, cross = [], []
        for s, conv in enumerate(column.convs):
            c_in = column.in_channels[s]
            part = nn.Conv2d(c_in, conv.out_channels, 3, padding=1, bias=conv.bias is not None)
            with torch.no_grad():
                part.weight.copy_(conv.weight[:, :c_in])
                if conv.bias is not None:
                    part.bias.copy_(conv.bias)
            own.append(part)
            if s > 0:
                finer = nn.Conv2d(
                    conv.in_channels - c_in, conv.out_channels, 3, padding=1, bias=False
                )
                with torch.no_grad():
                    finer.weight.copy_(conv.weight[:, c_in:])
                cross.append(finer)
        self.own = nn.ModuleList(own)
        self.cross = nn.ModuleList(cross)
        self.norms = column.norms
        self.in_channels = column.in_channels
        self.out_channels = column.out_channels

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        inputs = inputs[-len(self.own) :]
        outputs: list[torch.Tensor] = []
        for s, (conv, norm) in enumerate(zip(self.own, self.norms, strict=True)):
            x = conv(inputs[s])
            if s > 0:
                x = x + self.cross[s - 1](max_pool_2x2(outputs[-1]))
            outputs.append(F.relu(norm(x)))
        return outputs


class PyramidColumn(nn.Sequential):
    """The first column: builds the image pyramid, then applies a column."""

    def __init__(self, column: MultiScaleColumn) -> None:
        super().__init__(ImagePyramid(), column)

    @property
    def out_channels(self) -> list[int]:
        return self[1].out_channels
