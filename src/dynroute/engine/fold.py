"""Batch-norm folding for inference.

In eval mode a batch norm is a fixed per-channel affine map, so it can be folded
into the convolution or linear layer before it: the same function (up to
floating-point rounding) with one memory-bound pass less per layer. That pass
costs no MACs but real time, most of all in the wide, shallow first columns, so
folding brings wall-clock closer to what the MAC counts promise.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from dynroute.core.errors import DynrouteError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold batch norms into the layers before them, in place; returns how many.

    Handles modules with their own ``fold_batchnorm()`` (the multi-scale column)
    and every ``nn.Sequential`` in which a ``Conv2d`` or ``Linear`` is directly
    followed by a batch norm. Other batch norms are left as they are.
    """
    if module.training:
        raise DynrouteError("fold batch norms in eval mode only (call .eval() first)")
    folded = 0
    for child in list(module.modules()):
        own = getattr(child, "fold_batchnorm", None)
        if callable(own):
            folded += own()
        elif isinstance(child, nn.Sequential):
            folded += _fold_sequential(child)
    return folded


def _fold_sequential(seq: nn.Sequential) -> int:
    folded = 0
    for i in range(len(seq) - 1):
        layer, norm = seq[i], seq[i + 1]
        if not isinstance(norm, _BATCH_NORMS) or norm.running_mean is None:
            continue
        if isinstance(layer, nn.Conv2d):
            seq[i] = fuse_conv_bn_eval(layer, norm)
        elif isinstance(layer, nn.Linear):
            seq[i] = fuse_linear_bn_eval(layer, norm)
        else:
            continue
        seq[i + 1] = nn.Identity()
        folded += 1
    return folded
