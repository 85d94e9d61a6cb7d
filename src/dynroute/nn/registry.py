"""Named model builders: every model is buildable from a name and a spec.

``build_model("chain", num_classes=10, width=2, dynamic_k_cpt=True)``
returns a ``RoutedTree`` whose ``spec`` rebuilds it exactly. Built-in names:

- ``chain``: the 8-column routed chain (exit or continue after every column);
- ``static-N`` (N = 1..8): the first N columns and one classifier, the chain's
  statically-routed baselines;
- ``tree``: 3-way junctions after columns 1-3, then 2-way chains (47 columns);
- ``resnet18-exits``, ``mobilenet-v3-small-exits`` and their ``...-static-N`` baselines
  (``dynroute.nn.backbones``).

Register your own builder with ``@register_model("name")``; a model's static
baselines are registered with ``baseline_of=`` that model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.multiscale import COLUMN_CHANNELS, MultiScaleColumn, PyramidColumn
from dynroute.nn.tree import Node, RoutedTree

#: The paper's images are 32x32 RGB; other sizes are built when a dataset asks for them.
IMAGE_SIZE = 32
CHANNELS = 3
#: The multi-scale columns work on a 4-level pyramid: the image size must halve 3 times.
PYRAMID_FACTOR = 8
#: The paper's chain has one column per entry of COLUMN_CHANNELS.
COLUMNS = len(COLUMN_CHANNELS)
#: The branching tree (paper §5.4, figure 7): after column i, this many copies of column
#: i + 1 (besides the exit). Columns 1-3 are 3-way junctions, the rest 2-way.
TREE_BRANCHES = (2, 2, 2, 1, 1, 1, 1)
TREE_COPY_NAMES = "ab"

Builder = Callable[..., Node]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and what kind of network it is.

    ``static``: the tree has no junctions and trains with the static strategy.
    ``baseline_of``: the routed model whose static truncation this is (its exits'
    static counterparts, drawn as the static curve next to it).
    """

    name: str
    builder: Builder
    static: bool = False
    baseline_of: str | None = None
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    static: bool = False,
    baseline_of: str | None = None,
    description: str = "",
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, width=1, dynamic_k_cpt=False) -> root Node``.

    A builder for images of other sizes than 32x32 also takes ``image_size`` (square).
    """

    def wrap(builder: Builder) -> Builder:
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(name, builder, static, baseline_of, description or doc[0])
        return builder

    return wrap


def model_names() -> list[str]:
    """Every registered name, the single source of truth for ``dynroute model list``."""
    return list(_REGISTRY)


def get_model(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DynrouteError(
            f"unknown model {name!r}; choose from {', '.join(model_names())}"
        ) from None


def is_static_model(name: str) -> bool:
    """Whether ``name`` is a registered network without junctions (False if unknown)."""
    entry = _REGISTRY.get(name)
    return entry is not None and entry.static


def static_baselines(name: str) -> list[str]:
    """The static truncations registered for routed model ``name``, shallowest first."""
    return [entry.name for entry in _REGISTRY.values() if entry.baseline_of == name]


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
        if dynamic_k_cpt:
            raise DynrouteError("a static network has no routers: dynamic k_cpt does not apply")
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
) -> RoutedTree:
    """Build a registered model from its name and options (square RGB images)."""
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise DynrouteError(f"width must be a positive integer, got {width}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise DynrouteError(f"a model needs at least 2 classes, got {num_classes}")
    entry = get_model(name)
    spec: dict[str, Any] = {
        "name": name,
        "num_classes": int(num_classes),
        "width": int(width),
        "dynamic_k_cpt": bool(dynamic_k_cpt),
    }
    options: dict[str, Any] = {"width": int(width), "dynamic_k_cpt": bool(dynamic_k_cpt)}
    if image_size != IMAGE_SIZE:  # builders written for 32x32 images need not know the option
        spec["image_size"] = options["image_size"] = int(image_size)
    root = entry.builder(int(num_classes), **options)
    shape = (CHANNELS, int(image_size), int(image_size))
    return RoutedTree(root, shape, num_classes, dynamic_k_cpt=dynamic_k_cpt, spec=spec)


def build_from_spec(spec: dict[str, Any]) -> RoutedTree:
    """Rebuild a model from the ``spec`` a checkpoint carries."""
    known = {"name", "num_classes", "width", "dynamic_k_cpt", "image_size"}
    unknown = set(spec) - known
    if "name" not in spec or unknown:
        raise DynrouteError(f"invalid model spec {spec!r}")
    return build_model(**spec)


# The torchvision backbones (ResNet-18, MobileNetV3-small) register themselves through the
# hooks above; imported last, since their module needs those hooks.
from dynroute.nn import backbones  # noqa: E402, F401
