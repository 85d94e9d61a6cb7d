"""Seeded, resumable batch sampling from a loaded dataset split.

The paper samples each training batch uniformly with replacement; an epoch
mode (shuffled passes without replacement) is offered too. All randomness --
indices, shifts, flips -- comes from one CPU ``torch.Generator`` whose state is
part of ``state_dict()``, so a resumed run continues the exact same stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dynroute.core.errors import DynrouteError
from dynroute.data.augment import DEFAULT_MAX_SHIFT, AugmentParams, draw_params, shift_and_flip
from dynroute.data.datasets import DatasetSplit
from dynroute.platform.devices import to_device

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchLoader:
    """Yields (images, labels) batches; images float32 NCHW, labels int64, on ``device``.

    The split is copied into RAM once as a torch tensor (hybrid train is ~680 MB)
    because random indexing of a memmap would hit the disk on every batch. On a
    GPU it lives in device memory: a batch then costs one small copy of the
    random draws (indices, labels, shifts, flips), never a copy of images.
    """

    def __init__(
        self,
        split: DatasetSplit,
        batch_size: int,
        *,
        seed: int = 0,
        augment: bool = True,
        replacement: bool = True,
        device: str | torch.device = "cpu",
        max_shift: int = DEFAULT_MAX_SHIFT,
    ):
        if batch_size < 1:
            raise DynrouteError(f"batch size must be at least 1, got {batch_size}")
        if len(split) == 0:
            raise DynrouteError("cannot sample batches from an empty split")
        self.images = torch.from_numpy(np.array(split.images, dtype=np.float32))
        self.labels = torch.from_numpy(np.array(split.labels, dtype=np.int64))
        self.mirror_symmetric = torch.tensor(split.mirror_symmetric, dtype=torch.bool)
        self.batch_size = batch_size
        self.augment = augment
        self.replacement = replacement
        self.device = torch.device(device)
        if self.device.type != "cpu":
            self.images = self.images.to(self.device)
        self.max_shift = max_shift
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation: torch.Tensor | None = None
        self.position = 0
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch (the last one may be smaller in epoch mode)."""
        return -(-len(self.labels) // self.batch_size)

    def _next_indices(self) -> torch.Tensor:
        count = len(self.labels)
        if self.replacement:
            return torch.randint(count, (self.batch_size,), generator=self.generator)
        if self.permutation is None or self.position >= count:
            if self.permutation is not None:
                self.epoch += 1
            self.permutation = torch.randperm(count, generator=self.generator)
            self.position = 0
        indices = self.permutation[self.position : self.position + self.batch_size]
        self.position += len(indices)
        return indices

    def next_batch(self) -> Batch:
        """One batch: with replacement (paper) or the next slice of a shuffled epoch."""
        indices = self._next_indices()
        labels = self.labels[indices]
        params = (
            draw_params(labels, self.mirror_symmetric, self.generator, self.max_shift)
            if self.augment
            else None
        )
        if self.device.type != "cpu":  # all draws in one asynchronous copy
            extra = [params.shift_x, params.shift_y, params.flip.long()] if params else []
            draws = to_device(torch.stack([indices, labels, *extra]), self.device)
            indices, labels = draws[0], draws[1]
            if params:
                params = AugmentParams(draws[2], draws[3], draws[4].bool())
        # index_select is several times faster than advanced indexing for row gathers.
        images = torch.index_select(self.images, 0, indices)
        if params:
            images = shift_and_flip(images, params)
        return images, labels

    def __iter__(self) -> Iterator[Batch]:
        """An endless stream; training loops stop after their own number of steps."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "generator": self.generator.get_state(),
            "permutation": self.permutation,
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"]
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])
