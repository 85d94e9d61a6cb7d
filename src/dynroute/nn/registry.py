"""Named model builders: every model is buildable from a name and a spec.

``build_model("chain", num_classes=10, width=2, dynamic_k_cpt=True)``
returns a ``RoutedTree`` whose ``spec`` rebuilds it exactly. Built-in names:

- ``chain``: the 8-column routed chain (exit or continue after every column);
- ``static-N`` (N = 1..8): the first N columns and one classifier;
- ``tree``: 3-way junctions after columns 1-3, then 2-way chains (47 columns).

Register your own builder with ``@register_model("name")``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.multiscale import COLUMN_CHANNELS, MultiScaleColumn, PyramidColumn
from dynroute.nn.tree import Node, RoutedTree

INPUT_SHAPE = (3, 32, 32)
COARSEST_PIXELS = 4 * 4

Builder = Callable[..., Node]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, width, dynamic_k_cpt) -> root Node``."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY) + [f"static-{n}" for n in range(1, 9)]


def _column(index: int, width: int) -> MultiScaleColumn | PyramidColumn:
    """Column ``index`` (0-based) of the multi-scale architecture at a width."""
    out = [c * width for c in COLUMN_CHANNELS[index]]
    if index == 0:
        return PyramidColumn(MultiScaleColumn([3] * 4, out))
    return MultiScaleColumn([c * width for c in COLUMN_CHANNELS[index - 1]], out)


def _exit_features(index: int, width: int) -> int:
    return COLUMN_CHANNELS[index][-1] * width * COARSEST_PIXELS


def _routed_column(
    index: int, name: str, next_nodes: list[Node], num_classes: int, width: int, dynamic: bool
) -> Node:
    """A column whose sinks are its own exit followed by ``next_nodes``."""
    features = _exit_features(index, width)
    exit_node = Node(Classifier(features, num_classes), name=f"exit{name[6:]}")
    sinks = [exit_node, *next_nodes]
    router = Router(features, len(sinks), k_cpt_input=dynamic) if len(sinks) > 1 else None
    return Node(_column(index, width), sinks, router, name=name)


@register_model("chain")
def build_chain(num_classes: int, width: int = 1, dynamic_k_cpt: bool = False) -> Node:
    node: Node | None = None
    for index in reversed(range(8)):
        nxt = [] if node is None else [node]
        node = _routed_column(index, f"column{index + 1}", nxt, num_classes, width, dynamic_k_cpt)
    return node


@register_model("tree")
def build_tree(num_classes: int, width: int = 1, dynamic_k_cpt: bool = False) -> Node:
    """Columns 1-3 branch three ways (exit or one of two copies of the next column)."""

    def build(index: int, suffix: str) -> Node:
        name = f"column{index + 1}{suffix}"
        if index == 7:
            return _routed_column(index, name, [], num_classes, width, dynamic_k_cpt)
        copies = ["a", "b"] if index < 3 else [""]
        nxt = [build(index + 1, suffix + c) for c in copies]
        return _routed_column(index, name, nxt, num_classes, width, dynamic_k_cpt)

    return build(0, "")


def build_static(depth: int, num_classes: int, width: int = 1) -> Node:
    exit_node = Node(Classifier(_exit_features(depth - 1, width), num_classes), name="exit")
    node = Node(_column(depth - 1, width), [exit_node], name=f"column{depth}")
    for index in reversed(range(depth - 1)):
        node = Node(_column(index, width), [node], name=f"column{index + 1}")
    return node


def build_model(
    name: str, num_classes: int = 10, width: int = 1, dynamic_k_cpt: bool = False
) -> RoutedTree:
    """Build a registered model from its name and options."""
    if width < 1 or int(width) != width:
        raise DynrouteError(f"width must be a positive integer, got {width}")
    spec: dict[str, Any] = {
        "name": name,
        "num_classes": int(num_classes),
        "width": int(width),
        "dynamic_k_cpt": bool(dynamic_k_cpt),
    }
    match = re.fullmatch(r"static-(\d+)", name)
    if match:
        depth = int(match.group(1))
        if not 1 <= depth <= 8:
            raise DynrouteError(f"static-N needs N in 1..8, got {name!r}")
        if dynamic_k_cpt:
            raise DynrouteError("a static network has no routers: dynamic k_cpt does not apply")
        root = build_static(depth, num_classes, int(width))
    elif name in _REGISTRY:
        root = _REGISTRY[name](num_classes, width=int(width), dynamic_k_cpt=dynamic_k_cpt)
    else:
        raise DynrouteError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return RoutedTree(root, INPUT_SHAPE, num_classes, dynamic_k_cpt=dynamic_k_cpt, spec=spec)


def build_from_spec(spec: dict[str, Any]) -> RoutedTree:
    """Rebuild a model from the ``spec`` a checkpoint carries."""
    known = {"name", "num_classes", "width", "dynamic_k_cpt"}
    unknown = set(spec) - known
    if "name" not in spec or unknown:
        raise DynrouteError(f"invalid model spec {spec!r}")
    return build_model(**spec)
