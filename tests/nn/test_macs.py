"""MAC accounting: analytic counts against torch's flop counter and the paper's figures."""

from __future__ import annotations

import pytest

from dynroute.nn.macs import count_node_macs, flop_counter_macs, tree_costs
from dynroute.nn.models import build_model

#: Cumulative MACs (millions) of the chain after each column, exit included (docs/method.md §3).
CHAIN_CUMULATIVE = [1.37, 5.28, 7.58, 11.42, 13.51, 17.06, 18.28, 20.64]
#: Column 1 reads the 3 image channels at 32, 16, 8 and 4 px: this part grows only
#: linearly with the width (9 * 3 * 16 * (32^2 + 16^2 + 8^2 + 4^2) MACs at width 1).
FIRST_INPUT_CONV_MACS = 9 * 3 * 16 * (32**2 + 16**2 + 8**2 + 4**2)


# Static nets reuse the chain's columns, so the chain at every width plus each static
# depth once covers every layer shape; the 94-node tree is the slowest case (~2-5 s).
@pytest.mark.parametrize(
    ("name", "width"),
    [
        ("chain", 1),
        ("chain", 2),
        ("chain", 3),
        ("static-8", 3),
        ("tree", 1),
        pytest.param("tree", 2, marks=pytest.mark.slow),
        pytest.param("tree", 3, marks=pytest.mark.slow),
    ],
)
def test_counts_match_flop_counter(name: str, width: int) -> None:
    tree = build_model(name, width=width)
    assert count_node_macs(tree) == flop_counter_macs(tree)


@pytest.mark.slow
def test_counts_match_flop_counter_every_static_depth() -> None:
    for depth in range(1, 9):
        tree = build_model(f"static-{depth}")
        assert count_node_macs(tree) == flop_counter_macs(tree)


def test_chain_cumulative_macs_match_the_paper() -> None:
    tree = build_model("chain")
    cumulative = [tree_costs(tree).path_macs[leaf] / 1e6 for leaf in tree.leaves]
    assert cumulative == pytest.approx(CHAIN_CUMULATIVE, rel=0.03)
    assert sum(tree_costs(build_model("static-8")).node_macs) / 1e6 == pytest.approx(
        20.55, rel=0.01
    )


def conv_macs(width: int) -> int:
    """MACs of the eight columns of static-8 (no routers; the exit is the only linear layer)."""
    tree = build_model("static-8", width=width)
    macs = tree_costs(tree).node_macs
    return sum(m for m, node in zip(macs, tree.nodes, strict=True) if not node.is_leaf)


@pytest.mark.parametrize("width", [2, 3])
def test_width_scales_convolutions_quadratically(width: int) -> None:
    base = conv_macs(1)
    # Every conv grows as width^2 except the image-reading part of column 1 (width^1): exact.
    quadratic = base - FIRST_INPUT_CONV_MACS
    assert conv_macs(width) == width**2 * quadratic + width * FIRST_INPUT_CONV_MACS
    # That part is under 3% of the total, so the overall factor stays within 3% of width^2.
    assert conv_macs(width) / base == pytest.approx(width**2, rel=0.03)


def test_branching_tree_shape() -> None:
    tree = build_model("tree")
    assert len(tree.nodes) - len(tree.leaves) == 47
    assert len(tree.leaves) == 47
    fan_outs = [len(tree.children_of[j]) for j in tree.junctions]
    assert fan_outs.count(3) == 1 + 2 + 4 and fan_outs.count(2) == 8 * 4
