"""ResNet-18 and MobileNetV3-small cut into stages, and their routed and static models.

Both are written after torchvision's definitions (``torchvision.models.resnet18`` and
``mobilenet_v3_small``: the same layers, initialisation and batch-norm settings), because
torchvision itself cannot be installed beside the local CPU torch. Inside each stage the
parameters and buffers carry torchvision's full names (``conv1.weight``,
``layer3.1.bn2.running_var``, ``features.3.block.0.0.weight``), so a torchvision state
dict loads stage by stage (``load_torchvision_weights``, ``--pretrained-weights``); the
classifier at the end (``fc``, ``classifier``) is never loaded, since every exit has its
own head.

Stages: ResNet-18's stem with ``layer1``, then ``layer2``, ``layer3``, ``layer4``;
MobileNetV3-small's ``features`` grouped at its stride-2 blocks: 0-1, 2-3, 4-8, 9-12 (the
last with the 576-channel 1x1 convolution). Each stage halves the map (the first
quarters it), at any image size. ``width`` multiplies every convolution's channels
(MobileNet's own width multiplier), so only width 1 matches torchvision's weights.

Registered models (``dynroute model list``): ``resnet18-exits`` and
``mobilenet-v3-small-exits``, routed chains over the 4 stages, and their static
baselines ``resnet18-static-N`` and ``mobilenet-v3-small-static-N`` (N = 1..4).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dynroute.core.errors import DynrouteError
from dynroute.nn.chains import routed_chain_root, static_truncation_root
from dynroute.nn.registry import CHANNELS, IMAGE_SIZE, register_model
from dynroute.nn.tree import Node, RoutedTree

# ---------------------------------------------------------------------- ResNet-18

#: Output channels of ResNet-18's four layers (two basic blocks each).
RESNET18_CHANNELS = (64, 128, 256, 512)
RESNET18_BLOCKS = 2


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convolutions and a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)

    def fold_batchnorm(self) -> int:
        """Fold bn1 and bn2 into their convolutions (``dynroute.engine.fold``; the shortcut is
        an ``nn.Sequential`` and folded there)."""
        folded = 0
        for conv, norm in (("conv1", "bn1"), ("conv2", "bn2")):
            if isinstance(getattr(self, norm), nn.BatchNorm2d):
                setattr(self, conv, fuse_conv_bn_eval(getattr(self, conv), getattr(self, norm)))
                setattr(self, norm, nn.Identity())
                folded += 1
        return folded


def _resnet_layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(c_in, c_out, stride)]
    blocks += [BasicBlock(c_out, c_out) for _ in range(RESNET18_BLOCKS - 1)]
    return nn.Sequential(*blocks)


def _init_resnet(module: nn.Module) -> None:
    """torchvision's ResNet initialisation (Kaiming normal, fan-out; unit batch norms)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18_stages(width: int = 1) -> list[nn.Module]:
    """ResNet-18 as 4 stages: stem (7x7 conv, max pool) with layer1, layer2, layer3, layer4."""
    c = [channels * width for channels in RESNET18_CHANNELS]
    stem = OrderedDict(
        conv1=nn.Conv2d(3, c[0], 7, 2, 3, bias=False),
        bn1=nn.BatchNorm2d(c[0]),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(3, 2, 1),
        layer1=_resnet_layer(c[0], c[0], 1),
    )
    stages = [nn.Sequential(stem)]
    for k in range(1, len(c)):
        layer = _resnet_layer(c[k - 1], c[k], 2)
        stages.append(nn.Sequential(OrderedDict({f"layer{k + 1}": layer})))
    for stage in stages:
        _init_resnet(stage)
    return stages


# ---------------------------------------------------------------------- MobileNetV3-small


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, losing < 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BottleneckConfig:
    """One row of MobileNetV3's table (torchvision's ``InvertedResidualConfig``)."""

    c_in: int
    kernel: int
    expanded: int
    c_out: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hardswish)
    stride: int


#: torchvision's ``_mobilenet_v3_conf("mobilenet_v3_small")``: features 1-11.
MOBILENET_V3_SMALL_TABLE = (
    BottleneckConfig(16, 3, 16, 16, True, "RE", 2),
    BottleneckConfig(16, 3, 72, 24, False, "RE", 2),
    BottleneckConfig(24, 3, 88, 24, False, "RE", 1),
    BottleneckConfig(24, 5, 96, 40, True, "HS", 2),
    BottleneckConfig(40, 5, 240, 40, True, "HS", 1),
    BottleneckConfig(40, 5, 240, 40, True, "HS", 1),
    BottleneckConfig(40, 5, 120, 48, True, "HS", 1),
    BottleneckConfig(48, 5, 144, 48, True, "HS", 1),
    BottleneckConfig(48, 5, 288, 96, True, "HS", 2),
    BottleneckConfig(96, 5, 576, 96, True, "HS", 1),
    BottleneckConfig(96, 5, 576, 96, True, "HS", 1),
)
#: First index in ``features`` of each stage: each begins at a stride-2 block (the stem's
#: stride-2 convolution and the first block together make stage 1).
MOBILENET_V3_SMALL_STAGE_STARTS = (0, 2, 4, 9)
#: torchvision's batch norm for MobileNetV3.
_MOBILENET_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: conv (no bias), batch norm, activation."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        layers = [
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            _MOBILENET_NORM(c_out),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's squeeze-and-excitation with MobileNetV3's hard sigmoid."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV3 block: expand (1x1), depthwise, squeeze-excite, project."""

    def __init__(self, config: BottleneckConfig) -> None:
        super().__init__()
        act = nn.Hardswish if config.activation == "HS" else nn.ReLU
        wide = config.expanded
        layers: list[nn.Module] = []
        if wide != config.c_in:
            layers.append(ConvNormActivation(config.c_in, wide, 1, activation=act))
        layers.append(
            ConvNormActivation(wide, wide, config.kernel, config.stride, wide, activation=act)
        )
        if config.use_se:
            layers.append(SqueezeExcitation(wide, make_divisible(wide // 4)))
        layers.append(ConvNormActivation(wide, config.c_out, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = config.stride == 1 and config.c_in == config.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out += x
        return out


def _init_mobilenet(module: nn.Module) -> None:
    """torchvision's MobileNetV3 initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def mobilenet_v3_small_features(width: int = 1) -> list[nn.Module]:
    """torchvision's ``features``, 0-12: stem, the 11 blocks, the last 1x1 convolution."""
    table = [
        BottleneckConfig(
            make_divisible(row.c_in * width),
            row.kernel,
            make_divisible(row.expanded * width),
            make_divisible(row.c_out * width),
            row.use_se,
            row.activation,
            row.stride,
        )
        for row in MOBILENET_V3_SMALL_TABLE
    ]
    stem = ConvNormActivation(3, table[0].c_in, 3, 2, activation=nn.Hardswish)
    last = table[-1].c_out
    head = ConvNormActivation(last, 6 * last, 1, activation=nn.Hardswish)
    return [stem, *(InvertedResidual(row) for row in table), head]


def mobilenet_v3_small_stages(width: int = 1) -> list[nn.Module]:
    """MobileNetV3-small as 4 stages: ``features`` 0-1, 2-3, 4-8 and 9-12."""
    features = mobilenet_v3_small_features(width)
    bounds = [*MOBILENET_V3_SMALL_STAGE_STARTS, len(features)]
    stages = []
    for start, end in pairwise(bounds):
        blocks = OrderedDict((str(i), features[i]) for i in range(start, end))
        stages.append(nn.Sequential(OrderedDict(features=nn.Sequential(blocks))))
    for stage in stages:
        _init_mobilenet(stage)
    return stages


# ---------------------------------------------------------------------- weights and models


@dataclass(frozen=True)
class Backbone:
    """A stage list and what its torchvision state dict holds besides the stages."""

    name: str
    stages: Callable[[int], list[nn.Module]]
    depth: int
    head_prefixes: tuple[str, ...]

    def stage_keys(self) -> set[str]:
        """Every state-dict key of the full backbone's stages (built without memory)."""
        with torch.device("meta"):
            return {key for stage in self.stages(1) for key in stage.state_dict()}


BACKBONES = {
    "resnet18": Backbone("resnet18", resnet18_stages, len(RESNET18_CHANNELS), ("fc.",)),
    "mobilenet-v3-small": Backbone(
        "mobilenet-v3-small",
        mobilenet_v3_small_stages,
        len(MOBILENET_V3_SMALL_STAGE_STARTS),
        ("classifier.",),
    ),
}
#: Registered model name -> its backbone (for ``load_pretrained``).
_MODEL_BACKBONES: dict[str, str] = {}
#: Buffers a torchvision file may lack (weights saved before torch 0.4.1 have none).
_OPTIONAL_KEYS = ("num_batches_tracked",)


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def load_torchvision_weights(
    stages: Sequence[nn.Module],
    state: Mapping[str, torch.Tensor],
    backbone: str,
    source: str = "state dict",
) -> None:
    """Copy a torchvision state dict into stages built here (any prefix of the stage list).

    Keys of stages not given (a static truncation's deeper stages) and of the classifier
    are skipped; a key torchvision's model would not hold, a missing key or a shape that
    differs is a ``DynrouteError`` naming them.
    """
    if backbone not in BACKBONES:
        raise DynrouteError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    spec = BACKBONES[backbone]
    known = spec.stage_keys()
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    unexpected = [k for k in state if k not in known and not k.startswith(spec.head_prefixes)]
    wanted = {k: v for stage in stages for k, v in stage.state_dict().items()}
    missing = [k for k in wanted if k not in state and not k.endswith(_OPTIONAL_KEYS)]
    mis_shaped = [
        f"{k} (model {tuple(v.shape)}, file {tuple(state[k].shape)})"
        for k, v in wanted.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_listed(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mis_shaped),
            ("not tensors", not_tensors),
        )
        if keys
    ]
    if problems:
        raise DynrouteError(
            f"{source} is not a torchvision {backbone} state dict for these stages: "
            + "; ".join(problems)
        )
    with torch.no_grad():
        for stage in stages:
            own = stage.state_dict()
            stage.load_state_dict({k: state.get(k, own[k]) for k in own})


def read_state_dict(path: str | os.PathLike[str], source: str) -> dict[str, torch.Tensor]:
    """A state dict file, read with ``weights_only`` (plain tensors, no pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DynrouteError(f"{source}: no such file") from None
    except Exception as exc:  # torch raises many types for damaged or non-torch files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DynrouteError(f"{source} is not a readable state dict: {first}") from None
    if not isinstance(state, dict):
        raise DynrouteError(f"{source} holds a {type(state).__name__}, not a state dict")
    return state


def load_pretrained(tree: RoutedTree, path: str | os.PathLike[str]) -> None:
    """Load a local torchvision state dict file into a registered backbone model's stages."""
    source = f"`pretrained_weights` {path}"
    backbone = _MODEL_BACKBONES.get(tree.spec.get("name", ""))
    if backbone is None:
        models = ", ".join(_MODEL_BACKBONES)
        raise DynrouteError(f"{source}: pretrained weights load into these models only: {models}")
    stages = [node.transform for node in tree.nodes if not node.is_leaf]
    load_torchvision_weights(stages, read_state_dict(path, source), backbone, source)


def _register(backbone: Backbone) -> None:
    """Register ``NAME-exits`` and its static baselines ``NAME-static-N``."""
    routed = f"{backbone.name}-exits"

    def build(
        num_classes: int, width: int = 1, dynamic_k_cpt: bool = False, image_size: int = IMAGE_SIZE
    ) -> Node:
        shape = (CHANNELS, image_size, image_size)
        return routed_chain_root(backbone.stages(width), num_classes, shape, dynamic_k_cpt)

    description = f"{backbone.name}'s {backbone.depth} stages; after each, a router: exit or not"
    register_model(routed, description=description)(build)
    _MODEL_BACKBONES[routed] = backbone.name
    for depth in range(1, backbone.depth + 1):
        _register_static(backbone, depth, routed)


def _register_static(backbone: Backbone, depth: int, routed: str) -> None:
    def build(
        num_classes: int, width: int = 1, dynamic_k_cpt: bool = False, image_size: int = IMAGE_SIZE
    ) -> Node:
        if dynamic_k_cpt:
            raise DynrouteError("a static network has no routers: dynamic k_cpt does not apply")
        shape = (CHANNELS, image_size, image_size)
        return static_truncation_root(backbone.stages(width), depth, num_classes, shape)

    name = f"{backbone.name}-static-{depth}"
    description = f"{backbone.name}'s first {depth} stage(s) and one classifier"
    register_model(name, static=True, baseline_of=routed, description=description)(build)
    _MODEL_BACKBONES[name] = backbone.name


for _backbone in BACKBONES.values():
    _register(_backbone)
