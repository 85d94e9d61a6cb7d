"""State dicts shaped like torchvision's, for the backbone weight-loading tests."""

from __future__ import annotations

import torch

from dynroute.nn.backbones import BACKBONES

#: torchvision's classifier keys (never loaded: every exit has its own head).
HEAD_KEYS = {
    "resnet18": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
    "mobilenet-v3-small": {"classifier.0.weight": (1024, 576), "classifier.3.bias": (1000,)},
}


def torchvision_state(backbone: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's keys (stages plus its classifier) and random values a
    network can run on (small weights, positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for stage in BACKBONES[backbone].stages(1):
        for key, value in stage.state_dict().items():
            if key.endswith("running_var"):
                value = torch.rand(value.shape, generator=gen) + 0.5
            elif value.is_floating_point():
                value = torch.randn(value.shape, generator=gen) * 0.05
            state[key] = value
    for key, shape in HEAD_KEYS[backbone].items():
        state[key] = torch.randn(shape, generator=gen) * 0.05
    return state
