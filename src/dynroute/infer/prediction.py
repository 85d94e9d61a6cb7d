"""What hard routing produces for a batch, whichever way it was computed.

The dense reference (``dynroute.infer.evaluate.predict_dense``) and the
early-exit engine (``dynroute.infer.engine``) both return a ``Prediction`` so
that tests and the evaluator can use either one interchangeably.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
