"""The model registry's mechanism and the model spec: what a name and a spec may be.

A *spec* is the plain data a model is built from and a checkpoint stores::

    {"name": "chain", "num_classes": 10, "width": 1, "dynamic_k_cpt": False}

(``image_size`` too, where it is not 32, and ``boost`` for boosted exits).
``validate_spec`` is the one place a spec is checked; ``dynroute.nn.models.build_model``
builds a spec after checking it, and checkpoints check theirs before anything is built.

Builders register themselves here with ``@register_model("name")``: the paper's chain,
tree and static nets (``dynroute.nn.models``) and the torchvision backbones
(``dynroute.nn.backbones``). This module imports neither of them (nor torch), so a
command-line parser or a config can read the limits below without loading a network:
the catalogue of every registered name is ``dynroute.nn.models``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynroute.core.errors import DynrouteError

#: The paper's images are 32x32 RGB; other sizes are built when a dataset asks for them.
IMAGE_SIZE = 32
CHANNELS = 3
#: Square image sides a model (and a dataset) may use.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024
#: Largest channel multiplier of a model.
MAX_WIDTH = 16
#: Largest class count a spec may ask for (a linear head per exit grows with it).
MAX_CLASSES = 100_000
#: The spec name (and run config model) of a tree built in Python and trained with
#: ``dynroute.fit``: no registered builder makes it, so its checkpoint cannot rebuild it.
CUSTOM_MODEL = "custom"

#: ``builder(num_classes, width=1, dynamic_k_cpt=False[, image_size]) -> root Node``.
Builder = Callable[..., Any]


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

    A builder for images of other sizes than 32x32 also takes ``image_size`` (square). A
    name can be registered once: a second builder under the same name is refused.
    """
    if not isinstance(name, str) or not name or name == CUSTOM_MODEL:
        raise DynrouteError(f"a model name must be a non-empty string other than {CUSTOM_MODEL!r}")

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise DynrouteError(f"a model named {name!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        described = description or (doc[0] if doc else "")
        _REGISTRY[name] = ModelEntry(name, builder, static, baseline_of, described)
        return builder

    return wrap


def registered(name: str) -> ModelEntry | None:
    """The entry registered under ``name`` so far (None if none is)."""
    return _REGISTRY.get(name)


def entries() -> list[ModelEntry]:
    """Every entry registered so far, in registration order."""
    return list(_REGISTRY.values())


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def validate_spec(spec: Any, source: str | None = None) -> dict[str, Any]:
    """A model spec's keys, types and ranges, checked before anything is built.

    ``source`` names where the spec came from in messages (a checkpoint file, say). A
    tampered spec (width 40, a billion classes) is refused before it can take minutes and
    gigabytes to build.
    """
    at = f"{source}: " if source else ""
    if not isinstance(spec, dict):
        raise DynrouteError(f"{at}the model spec is not a dictionary")
    if spec.get("name") == CUSTOM_MODEL:
        raise DynrouteError(
            f"{source or 'this spec'} holds a tree you built in Python, which it cannot "
            "rebuild: build the same tree and load the weights into it with "
            "dynroute.load(run, tree)"
        )
    checks = {
        "name": (lambda v: isinstance(v, str), "a registered model name"),
        "num_classes": (lambda v: _int_in(v, 2, MAX_CLASSES), f"an integer in 2..{MAX_CLASSES}"),
        "width": (lambda v: _int_in(v, 1, MAX_WIDTH), f"an integer in 1..{MAX_WIDTH}"),
        "dynamic_k_cpt": (lambda v: isinstance(v, bool), "true or false"),
        "image_size": (
            lambda v: _int_in(v, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
            f"an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}",
        ),
        "boost": (
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
            "a number in (0, 1] (boosted exits)",
        ),
    }
    unknown = sorted(set(spec) - set(checks))
    if unknown or "name" not in spec:
        raise DynrouteError(f"{at}invalid model spec {spec!r}")
    for key, (valid, expected) in checks.items():
        if key in spec and not valid(spec[key]):
            raise DynrouteError(f"{at}{key} must be {expected}, got {spec[key]!r}")
    if spec["name"] not in _REGISTRY:
        raise DynrouteError(
            f"{at}unknown model {spec['name']!r}; choose from {', '.join(_REGISTRY)}"
        )
    if _REGISTRY[spec["name"]].static and spec.get("boost"):
        raise DynrouteError(f"{at}{spec['name']} has one exit: boosting needs several")
    if _REGISTRY[spec["name"]].static and spec.get("dynamic_k_cpt"):
        raise DynrouteError(
            f"{at}{spec['name']} is a static network without routers: dynamic k_cpt does not apply"
        )
    return spec
