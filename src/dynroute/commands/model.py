"""``dynroute model``: list the built-in models and describe one's cost structure."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynroute.nn.tree import RoutedTree


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import config_range, ranged
    from dynroute.core.checks import Bounds, Range
    from dynroute.nn.registry import MAX_CLASSES

    parser = subparsers.add_parser("model", help="inspect the built-in models")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="list model names")
    listing.set_defaults(func=run_list)

    summary = sub.add_parser(
        "summary", help="print a model's tree with parameters and MACs per node and per exit"
    )
    summary.add_argument("name", help="model name (see `dynroute model list`)")
    summary.add_argument(
        "--width", type=ranged(config_range("width")), default=1, help="channel multiplier"
    )
    summary.add_argument(
        "--num-classes",
        type=ranged(Range(Bounds(2, MAX_CLASSES), True, "a classifier answers 2 classes or more")),
        default=10,
    )
    summary.add_argument(
        "--dynamic-k-cpt", action="store_true", help="routers also see k_cpt (paper §4.6)"
    )
    summary.set_defaults(func=run_summary)


def run_list(args: argparse.Namespace) -> int:
    from dynroute.nn.models import model_names

    for name in model_names():
        print(name)
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from dynroute.nn.models import build_model

    tree = build_model(args.name, args.num_classes, args.width, args.dynamic_k_cpt)
    print(summary_text(tree))
    return 0


def summary_text(tree: RoutedTree) -> str:
    """The tree indented by depth; exits also show the MACs of their whole path."""
    from dynroute.nn.macs import tree_costs

    costs = tree_costs(tree)
    macs = costs.node_macs
    params = [sum(p.numel() for p in node.own_parameters()) for node in tree.nodes]
    spec = tree.spec
    title = spec.get("name", type(tree.root.transform).__name__)
    lines = [
        f"{title}: width {spec.get('width', 1)}, {tree.num_classes} classes, "
        f"dynamic k_cpt {'on' if tree.dynamic_k_cpt else 'off'}",
        f"{'node':<32}{'params':>12}{'MACs':>14}{'path MACs':>14}",
    ]
    for i, node in enumerate(tree.nodes):
        depth = len(tree.path_to(i)) - 1
        label = "  " * depth + node.name + (" (router)" if node.is_junction else "")
        path = f"{costs.path_macs[i] / 1e6:.2f} M" if node.is_leaf else ""
        lines.append(f"{label:<32}{params[i]:>12,}{macs[i]:>14,}{path:>14}")
    n_leaves = len(tree.leaves)
    lines.append(
        f"column nodes: {len(tree.nodes) - n_leaves}, exits: {n_leaves}, "
        f"parameters: {sum(params):,} (MACs: multiply-accumulates per example)"
    )
    return "\n".join(lines)
