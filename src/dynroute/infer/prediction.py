"""What hard routing produces for a batch, whichever way it was computed.

The dense reference (``dynroute.infer.evaluate.predict_dense``) and the
early-exit engine (``dynroute.infer.engine``) both return a ``Prediction`` so
that tests and the evaluator can use either one interchangeably.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynroute.errors import DynrouteError


@dataclass
class Prediction:
    """Per-example outcome of hard routing.

    ``exits`` holds the pre-order index of the leaf that classified each
    example and ``macs`` the multiply-accumulates spent on it (every node on
    its root-to-exit path, routers included).
    """

    logits: torch.Tensor
    exits: torch.Tensor
    macs: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    def __len__(self) -> int:
        return int(self.exits.shape[0])


def check_images(x: torch.Tensor, input_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``x`` as a batch the tree can route, or a ``DynrouteError`` saying what is wrong.

    The shape must be (N, *input_shape); floating-point images are cast to the model's
    dtype; integer images (e.g. uint8 pixels in 0..255) are refused, since the networks
    read intensities in [0, 1]; non-finite values are refused, since routing them would
    silently send them somewhere (argmax of NaN scores is the first sink).
    """
    x = torch.as_tensor(x)
    if x.dim() != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
        raise DynrouteError(
            f"images of shape {tuple(x.shape)} given; this network reads batches of {expected}"
        )
    if not x.is_floating_point():
        raise DynrouteError(
            f"images of dtype {x.dtype} given; pass floating-point intensities in [0, 1] "
            "(e.g. uint8 pixels / 255)"
        )
    if x.dtype != dtype:
        x = x.to(dtype)
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise DynrouteError(
            f"{len(bad)} image(s) hold NaN or infinite values (first: index {int(bad[0])}); "
            "they cannot be routed"
        )
    return x
