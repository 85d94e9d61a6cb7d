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

#: Output channels per scale of the eight columns (REFERENCE §2), fine to coarse.
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


class ImagePyramid(nn.Module):
    """Image at 32, 16, 8, 4 px. Bilinear halving equals 2x2 average pooling."""

    def __init__(self, n_scales: int = PYRAMID_SCALES) -> None:
        super().__init__()
        self.n_scales = n_scales

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]
        for _ in range(self.n_scales - 1):
            levels.append(F.avg_pool2d(levels[-1], 2))
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
                x = torch.cat([x, F.max_pool2d(outputs[-1], 2)], dim=1)
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


class PyramidColumn(nn.Sequential):
    """The first column: builds the image pyramid, then applies a column."""

    def __init__(self, column: MultiScaleColumn) -> None:
        super().__init__(ImagePyramid(), column)

    @property
    def out_channels(self) -> list[int]:
        return self[1].out_channels
