"""The catalogue of models: the paper's builders, the backbones, and building from a name.

Every model is buildable from a name and a spec: ``build_model("chain", num_classes=10,
width=2, dynamic_k_cpt=True)`` returns a ``RoutedTree`` whose ``spec`` rebuilds it exactly.
Built-in names:

- ``chain``: the 8-column routed chain (exit or continue after every column);
- ``static-N`` (N = 1..8): the first N columns and one classifier, the chain's
  statically-routed baselines;
- ``tree``: 3-way junctions after columns 1-3, then 2-way chains (47 columns);
- ``resnet18-exits``, ``mobilenet-v3-small-exits`` and their ``...-static-N`` baselines
  (``dynroute.nn.backbones``, which registers them when this module imports it).

Register your own builder with ``@dynroute.register_model("name")``
(``dynroute.nn.registry``); a model's static baselines are registered with
``baseline_of=`` that model's name.
"""

from __future__ import annotations

import numbers
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.multiscale import COLUMN_CHANNELS, MultiScaleColumn, PyramidColumn
from dynroute.nn.registry import (
    CHANNELS,
    IMAGE_SIZE,
    ModelEntry,
    entries,
    register_model,
    registered,
    validate_spec,
)
from dynroute.nn.tree import Node, RoutedTree

#: The multi-scale columns work on a 4-level pyramid: the image size must halve 3 times.
PYRAMID_FACTOR = 8
#: The paper's chain has one column per entry of COLUMN_CHANNELS.
COLUMNS = len(COLUMN_CHANNELS)
#: The branching tree (paper §5.4, figure 7): after column i, this many copies of column
#: i + 1 (besides the exit). Columns 1-3 are 3-way junctions, the rest 2-way.
TREE_BRANCHES = (2, 2, 2, 1, 1, 1, 1)
TREE_COPY_NAMES = "ab"


def model_names() -> list[str]:
    """Every registered name, the single source of truth for ``dynroute model list``."""
    return [entry.name for entry in entries()]


def get_model(name: str) -> ModelEntry:
    entry = registered(name)
    if entry is None:
        raise DynrouteError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    return entry


def is_static_model(name: str) -> bool:
    """Whether ``name`` is a registered network without junctions (False if unknown)."""
    entry = registered(name)
    return entry is not None and entry.static


def static_baselines(name: str) -> list[str]:
    """The static truncations registered for routed model ``name``, shallowest first."""
    return [entry.name for entry in entries() if entry.baseline_of == name]


def _column(index: int, width: int) -> MultiScaleColumn | PyramidColumn:
    """Column ``index`` (0-based) of the multi-scale architecture at a width."""
    out = [c * width for c in COLUMN_CHANNELS[index]]
    if index == 0:
        return PyramidColumn(MultiScaleColumn([CHANNELS] * len(out), out))
    return MultiScaleColumn([c * width for c in COLUMN_CHANNELS[index - 1]], out)


def _exit_features(index: int, width: int, image_size: int) -> int:
    """Inputs of an exit head: the column's coarsest map, flattened."""
    if image_size % PYRAMID_FACTOR:
        raise DynrouteError(
            f"the multi-scale models need an image size divisible by {PYRAMID_FACTOR}, "
            f"got {image_size}"
        )
    return COLUMN_CHANNELS[index][-1] * width * (image_size // PYRAMID_FACTOR) ** 2


def _routed_column(
    index: int,
    suffix: str,
    next_nodes: list[Node],
    num_classes: int,
    width: int,
    dynamic: bool,
    image_size: int = IMAGE_SIZE,
) -> Node:
    """Column ``index`` (0-based) whose sinks are its own exit followed by ``next_nodes``."""
    features = _exit_features(index, width, image_size)
    exit_node = Node(Classifier(features, num_classes), name=f"exit{index + 1}{suffix}")
    sinks = [exit_node, *next_nodes]
    router = Router(features, len(sinks), k_cpt_input=dynamic) if len(sinks) > 1 else None
    return Node(_column(index, width), sinks, router, name=f"column{index + 1}{suffix}")


@register_model("chain")
def build_chain(
    num_classes: int, width: int = 1, dynamic_k_cpt: bool = False, image_size: int = IMAGE_SIZE
) -> Node:
    """The paper's 8 multi-scale columns; after each, a router: exit here or continue."""
    node: Node | None = None
    for index in reversed(range(COLUMNS)):
        nxt = [] if node is None else [node]
        node = _routed_column(index, "", nxt, num_classes, width, dynamic_k_cpt, image_size)
    assert node is not None
    return node


@register_model("tree")
def build_tree(
    num_classes: int, width: int = 1, dynamic_k_cpt: bool = False, image_size: int = IMAGE_SIZE
) -> Node:
    """3-way junctions after columns 1-3 (exit or one of two copies of the next column),
    then 2-way chains: 47 column nodes (paper figure 7)."""

    def build(index: int, suffix: str) -> Node:
        copies = [""]
        if index == COLUMNS - 1:
            copies = []
        elif TREE_BRANCHES[index] > 1:
            copies = list(TREE_COPY_NAMES[: TREE_BRANCHES[index]])
        nxt = [build(index + 1, suffix + copy) for copy in copies]
        return _routed_column(index, suffix, nxt, num_classes, width, dynamic_k_cpt, image_size)

    return build(0, "")


def build_static(
    depth: int, num_classes: int, width: int = 1, image_size: int = IMAGE_SIZE
) -> Node:
    """The first ``depth`` columns of the chain and one classifier."""
    features = _exit_features(depth - 1, width, image_size)
    exit_node = Node(Classifier(features, num_classes), name="exit")
    node = Node(_column(depth - 1, width), [exit_node], name=f"column{depth}")
    for index in reversed(range(depth - 1)):
        node = Node(_column(index, width), [node], name=f"column{index + 1}")
    return node


def _register_static(depth: int) -> None:
    def builder(
        num_classes: int, width: int = 1, dynamic_k_cpt: bool = False, image_size: int = IMAGE_SIZE
    ) -> Node:
        return build_static(depth, num_classes, width, image_size)

    register_model(
        f"static-{depth}",
        static=True,
        baseline_of="chain",
        description=f"the chain's first {depth} column(s) and one classifier",
    )(builder)


for _depth in range(1, COLUMNS + 1):
    _register_static(_depth)


def build_model(
    name: str,
    num_classes: int = 10,
    width: int = 1,
    dynamic_k_cpt: bool = False,
    image_size: int = IMAGE_SIZE,
    boost: float = 0.0,
) -> RoutedTree:
    """Build a registered model from its name and options (square RGB images; ``boost``:
    boosted exits, ``RoutedTree.boosted_logits``)."""
    spec: dict[str, Any] = {
        "name": name,
        "num_classes": _plain_int(num_classes),
        "width": _plain_int(width),
        "dynamic_k_cpt": dynamic_k_cpt,
    }
    if image_size != IMAGE_SIZE:  # builders written for 32x32 images need not know the option
        spec["image_size"] = _plain_int(image_size)
    if boost:  # specs of plain trees stay as they were
        spec["boost"] = float(boost)
    return build_from_spec(spec)


def _plain_int(value: Any) -> Any:
    """A NumPy or other integral number as a Python int (what a spec stores); else as is."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def build_from_spec(spec: dict[str, Any], source: str | None = None) -> RoutedTree:
    """Build the model a spec describes (a checkpoint's, say), once the spec is valid."""
    spec = dict(validate_spec(spec, source))
    options = {k: spec[k] for k in ("width", "dynamic_k_cpt", "image_size") if k in spec}
    root = get_model(spec["name"]).builder(spec["num_classes"], **options)
    size = spec.get("image_size", IMAGE_SIZE)
    return RoutedTree(
        root,
        (CHANNELS, size, size),
        spec["num_classes"],
        dynamic_k_cpt=spec.get("dynamic_k_cpt", False),
        spec=spec,
        boost=spec.get("boost", 0.0),
    )


# The torchvision backbones register themselves on import; imported after the paper's
# models so that the catalogue lists those first.
from dynroute.nn import backbones  # noqa: E402, F401
