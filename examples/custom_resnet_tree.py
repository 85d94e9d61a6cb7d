"""A user-assembled routed network: a small ResNet with an exit after each of 3 stages.

Run: python examples/custom_resnet_tree.py
"""

from __future__ import annotations

import torch
from torch import nn

from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.nn.chains import routed_chain
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import RoutedTree


class Block(nn.Module):
    """A ResNet basic block; ``stride=2`` halves the map and changes the width."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )  # fmt: skip
        self.skip = nn.Identity() if stride == 1 else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def build_resnet_tree(num_classes: int = 10) -> RoutedTree:
    """Three stages; after each one a router chooses between its exit and the next stage.

    ``routed_chain`` adds the exits and routers; they read the stage's map average-pooled
    to 2x2 (``head_pool``), so they stay cheap.
    """
    stages = [
        nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), Block(16, 16)),
        Block(16, 32, stride=2),
        Block(32, 64, stride=2),
    ]
    return routed_chain(stages, num_classes, input_shape=(3, 32, 32), head_pool=2)


def main() -> None:
    tree = build_resnet_tree().eval()
    for leaf in tree.leaves:
        print(f"{tree.nodes[leaf].name}: {tree_costs(tree).path_macs[leaf] / 1e6:.2f} M MACs")
    # Untrained routers score every sink 0 (all examples would take exit 1). As a
    # stand-in for training: random router last layers, batch-norm statistics of the batch.
    torch.manual_seed(0)
    images = torch.rand(256, 3, 32, 32) * torch.rand(256, 1, 1, 1)
    for module in tree.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    for j in tree.junctions:
        nn.init.normal_(tree.nodes[j].router.layers[-1].weight)
    with torch.no_grad():
        tree.train()(images)
    result = EarlyExitEngine(tree.eval())(images)
    exits = [tree.nodes[i].name for i in result.exits.tolist()]
    print({name: exits.count(name) for name in sorted(set(exits))})
    print(f"mean MACs per image: {result.macs.double().mean() / 1e6:.2f} M")


if __name__ == "__main__":
    main()
