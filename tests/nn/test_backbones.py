"""ResNet-18 and MobileNetV3-small as routed chains: architecture, MACs, torchvision weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.backbones import (
    BACKBONES,
    load_pretrained,
    load_torchvision_weights,
    mobilenet_v3_small_stages,
    resnet18_stages,
)
from dynroute.nn.macs import count_node_macs, flop_counter_macs, tree_costs
from dynroute.nn.models import (
    build_from_spec,
    build_model,
    is_static_model,
    model_names,
    static_baselines,
)
from dynroute.nn.prediction import predict_dense
from dynroute.nn.registry import validate_spec
from dynroute.train.config import TrainConfig
from helpers.backbones import torchvision_state
from helpers.routing import scramble_routing

ROUTED = ["resnet18-exits", "mobilenet-v3-small-exits"]
#: Cumulative MACs at each exit, 32x32 images, 10 classes (routers included).
EXIT_MACS_32 = {
    "resnet18-exits": [11_847_584, 20_239_168, 28_633_440, 37_024_608],
    "mobilenet-v3-small-exits": [137_152, 329_904, 803_808, 1_577_760],
}
#: torchvision's documented parameter counts (1000 classes) and its classifier's share.
TORCHVISION_PARAMETERS = {
    "resnet18": (11_689_512, 512 * 1000 + 1000),
    "mobilenet-v3-small": (2_542_856, 576 * 1024 + 1024 + 1024 * 1000 + 1000),
}
#: Real key names of torchvision's state dicts, with their shapes.
TORCHVISION_KEYS = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer3.1.bn2.running_var": (256,),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
    },
    "mobilenet-v3-small": {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.fc1.weight": (8, 16, 1, 1),
        "features.2.block.0.0.weight": (72, 16, 1, 1),
        "features.3.block.0.0.weight": (88, 24, 1, 1),
        "features.4.block.2.fc2.bias": (96,),
        "features.9.block.1.0.weight": (288, 1, 5, 5),
        "features.11.block.3.1.running_var": (96,),
        "features.12.0.weight": (576, 96, 1, 1),
    },
}


def test_registered_with_static_baselines() -> None:
    names = model_names()
    for routed, backbone in zip(ROUTED, BACKBONES, strict=True):
        baselines = [f"{backbone}-static-{n}" for n in range(1, 5)]
        assert routed in names and not is_static_model(routed)
        assert static_baselines(routed) == baselines
        assert all(is_static_model(name) for name in baselines)
        TrainConfig(model=baselines[1], strategy="static").validate()
        with pytest.raises(DynrouteError, match="needs the static strategy"):
            TrainConfig(model=baselines[1], strategy="actor").validate()
        with pytest.raises(DynrouteError, match="dynamic k_cpt does not apply"):
            build_model(baselines[0], dynamic_k_cpt=True)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_architecture_matches_torchvision(backbone: str) -> None:
    stages = BACKBONES[backbone].stages(1)
    state = {k: v for stage in stages for k, v in stage.state_dict().items()}
    for key, shape in TORCHVISION_KEYS[backbone].items():
        assert tuple(state[key].shape) == shape, key
    total, classifier = TORCHVISION_PARAMETERS[backbone]
    assert sum(p.numel() for s in stages for p in s.parameters()) == total - classifier


@pytest.mark.parametrize(("name", "width"), [(ROUTED[0], 1), (ROUTED[1], 1), (ROUTED[1], 2)])
def test_macs_match_flop_counter(name: str, width: int) -> None:
    tree = build_model(name, num_classes=10, width=width, image_size=16)
    assert count_node_macs(tree) == flop_counter_macs(tree)


@pytest.mark.parametrize("name", ROUTED)
def test_exit_macs_at_32_pixels(name: str) -> None:
    tree = build_model(name, num_classes=10)
    costs = tree_costs(tree)
    assert [costs.path_macs[leaf] for leaf in tree.leaves] == EXIT_MACS_32[name]


def test_static_truncation_is_the_chain_without_routers() -> None:
    routed = tree_costs(build_model("resnet18-exits", image_size=16))
    static = tree_costs(build_model("resnet18-static-2", image_size=16))
    routers = sum(routed.router_macs[:4])  # stage1, exit1, stage2, exit2
    assert sum(static.node_macs) == routed.path_macs[3] - routers  # exit2's path


@pytest.mark.parametrize(("name", "dynamic"), [(ROUTED[0], False), (ROUTED[1], True)])
def test_engine_matches_dense(name: str, dynamic: bool) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 32, 32, generator=gen) * torch.rand(32, 1, 1, 1, generator=gen)
    k = 2e-8 if dynamic else None
    tree = scramble_routing(build_model(name, 4, dynamic_k_cpt=dynamic), x, k)
    dense = predict_dense(tree, x, k)
    engine = EarlyExitEngine(tree)(x, k)
    assert torch.equal(engine.exits, dense.exits) and torch.equal(engine.macs, dense.macs)
    torch.testing.assert_close(engine.logits, dense.logits, rtol=1e-4, atol=1e-4)
    assert dense.exits.unique().numel() >= 2
    folded = EarlyExitEngine(tree, channels_last=True, fold_batchnorm=True)(x, k)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tree.modules())
    assert torch.equal(folded.exits, dense.exits)
    torch.testing.assert_close(folded.logits, dense.logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_torchvision_weights_load_stage_by_stage(backbone: str) -> None:
    state = torchvision_state(backbone)
    stages = BACKBONES[backbone].stages(1)[:2]  # a truncation: deeper keys are skipped
    load_torchvision_weights(stages, state, backbone)
    for stage in stages:
        for key, value in stage.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_weight_errors_name_the_keys() -> None:
    state = torchvision_state("mobilenet-v3-small")
    stages = mobilenet_v3_small_stages()
    del state["features.12.1.running_var"]
    state["features.13.0.weight"] = torch.zeros(1)
    with pytest.raises(DynrouteError, match=r"missing: features\.12\.1\.running_var") as info:
        load_torchvision_weights(stages, state, "mobilenet-v3-small")
    assert "unexpected: features.13.0.weight" in str(info.value)
    with pytest.raises(DynrouteError, match=r"shape mismatch: conv1\.weight \(model \(128, 3"):
        load_torchvision_weights(
            resnet18_stages(width=2), torchvision_state("resnet18"), "resnet18"
        )
    without_counters = {
        k: v for k, v in torchvision_state("resnet18").items() if "num_batches" not in k
    }
    load_torchvision_weights(resnet18_stages(), without_counters, "resnet18")  # older files


def test_pretrained_file_into_a_registered_model(tmp_path) -> None:
    path = tmp_path / "mobilenet_v3_small.pth"
    state = torchvision_state("mobilenet-v3-small", seed=1)
    torch.save(state, path)
    tree = build_model("mobilenet-v3-small-exits", 3, image_size=16)
    load_pretrained(tree, path)
    stage3 = tree.nodes[tree.node_index("stage3")].transform
    key = "features.4.block.0.0.weight"
    assert torch.equal(stage3.state_dict()[key], state[key])
    with pytest.raises(DynrouteError, match="load into these models only: resnet18-exits"):
        load_pretrained(build_model("chain"), path)
    with pytest.raises(DynrouteError, match="not a torchvision resnet18 state dict"):
        load_pretrained(build_model("resnet18-static-1"), path)
    with pytest.raises(DynrouteError, match="no such file"):
        load_pretrained(tree, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(DynrouteError, match="not a readable state dict"):
        load_pretrained(tree, tmp_path / "junk.pth")


@pytest.mark.parametrize("name", ["resnet18-exits", "mobilenet-v3-small-static-3"])
def test_checkpoint_specs_rebuild(name: str) -> None:
    tree = build_model(name, 7, width=1, image_size=24)
    spec = validate_spec(dict(tree.spec), "test")
    rebuilt = build_from_spec(spec)
    assert rebuilt.spec == tree.spec and rebuilt.input_shape == (3, 24, 24)
    assert list(rebuilt.state_dict()) == list(tree.state_dict())


@pytest.mark.parametrize("name", ROUTED)
def test_fitted_policies_run_on_backbone_exits(name: str) -> None:
    """Per-exit thresholds on raw and combined answers on ResNet-18 and MobileNetV3 exits:
    the engine runs what the dense reference decides."""
    from dynroute.core.policy import Policy

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 32, 32, generator=gen) * torch.rand(24, 1, 1, 1, generator=gen)
    torch.manual_seed(1)
    tree = scramble_routing(build_model(name, 4), x)
    # Untrained exits are unsure: each exit's threshold at a quantile of its confidences.
    with torch.no_grad():
        out = tree.eval().forward_dense(x)
    thresholds = [
        float(torch.softmax(out.logits[leaf], 1).max(1).values.quantile(0.7))
        for leaf in tree.leaves
    ]
    history = tree.shape.history
    weights = [
        (0.5 + torch.rand(len(history[leaf]) + 1, generator=gen)).tolist() for leaf in tree.leaves
    ]
    biases = [[0.0] * 4 for _ in tree.leaves]
    for policy in (
        Policy("budgeted", thresholds=thresholds),
        Policy(
            "budgeted", thresholds=thresholds, answers="combined", weights=weights, biases=biases
        ),
    ):
        dense = predict_dense(tree, x, policy=policy)
        engine = EarlyExitEngine(tree, policy=policy)(x)
        assert torch.equal(engine.exits, dense.exits) and torch.equal(engine.macs, dense.macs)
        torch.testing.assert_close(engine.logits, dense.logits, rtol=1e-4, atol=1e-4)
        assert dense.exits.unique().numel() >= 2  # the batch splits
