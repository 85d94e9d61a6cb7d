"""Checkpoints that rebuild their model from plain data and never run pickled code.

A checkpoint is a ``torch.save`` file holding only plain containers, numbers,
strings and tensors::

    {"format": 1, "spec": tree.spec, "state_dict": ..., "optimizer_state": ..., "extra": ...}

``spec`` rebuilds the architecture through ``dynroute.nn.registry``, so no
class is ever unpickled, and files are read with ``torch.load(weights_only=True)``:
a file that smuggles in an arbitrary object is refused, not executed. Writes go
to a temporary file first and are renamed into place, so an interrupted save
never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from dynroute.core.errors import DynrouteError
from dynroute.io.atomic import write_atomic
from dynroute.io.gate import open_regular
from dynroute.nn.models import build_from_spec
from dynroute.nn.registry import validate_spec
from dynroute.nn.tree import RoutedTree

FORMAT = 1
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Refuse at save time what ``weights_only`` loading would refuse later."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise DynrouteError(
            f"checkpoint {where} holds a {type(value).__name__}; only dicts, lists, "
            "numbers, strings, None and tensors can be stored"
        )


def save(
    path: str | os.PathLike,
    tree: RoutedTree,
    optimizer_state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``tree`` (and optionally optimizer state and plain ``extra`` data) atomically."""
    if not tree.spec:
        raise DynrouteError("this tree has no spec, so a checkpoint could not rebuild it")
    payload = {
        "format": FORMAT,
        "spec": dict(tree.spec),
        "state_dict": tree.state_dict(),
        "optimizer_state": optimizer_state,
        "extra": extra or {},
    }
    _check_plain(payload, "checkpoint")
    write_atomic(path, lambda f: torch.save(payload, f))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """The checkpoint's raw dictionary (for resuming), read without unpickling objects."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DynrouteError(f"checkpoint not found: {path}")
    with open_regular(path) as handle:  # never a FIFO, a device or a sparse file
        try:
            payload = torch.load(handle, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DynrouteError(
                f"checkpoint {path} is corrupt or holds objects other than plain data and "
                f"tensors, which are never unpickled: {str(exc).splitlines()[0]}"
            ) from exc
        except Exception as exc:  # torch raises many types for damaged files
            raise DynrouteError(f"checkpoint {path} is unreadable or corrupt: {exc}") from exc
    if not isinstance(payload, dict) or "format" not in payload:
        raise DynrouteError(f"{path} is not a dynroute checkpoint")
    if payload["format"] != FORMAT:
        raise DynrouteError(
            f"checkpoint {path} has format {payload['format']!r}; this version reads {FORMAT}"
        )
    for key, kind in (("spec", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise DynrouteError(f"checkpoint {path} lacks a valid {key!r} entry")
    return payload


def build_checked(spec: dict[str, Any], state: dict[str, Any], source: str) -> RoutedTree:
    """The model ``spec`` describes, once its weights are known to fit ``state``.

    The spec is validated first, then the model is built on the meta device (no memory,
    no time) to compare every parameter's shape with the stored one; only a checkpoint
    that fits is built for real. A tampered spec (width 40, a billion classes) is refused
    before it can take minutes and gigabytes to build.
    """
    spec = validate_spec(spec, source)
    with torch.device("meta"):
        skeleton = build_from_spec(spec, source)
    check_state_dict(skeleton, state, source=source)
    return build_from_spec(spec, source)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> RoutedTree:
    """Rebuild the model a checkpoint describes, load its weights, move it, set eval mode."""
    payload = load_checkpoint(path, map_location)
    source = f"checkpoint {path}"
    tree = build_checked(payload["spec"], payload["state_dict"], source)
    check_finite(payload["state_dict"], source)
    tree.load_state_dict(payload["state_dict"])
    return tree.to(map_location).eval()


def check_finite(state: dict[str, Any], source: str) -> None:
    """Refuse weights holding NaN or inf (a diverged run's): they would route silently."""
    bad = [
        key
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise DynrouteError(f"{source} holds non-finite weights ({', '.join(bad[:3])}, ...)")


def check_state_dict(tree: RoutedTree, state: dict[str, Any], source: str = "state dict") -> None:
    """Raise a ``DynrouteError`` naming missing, unexpected, mis-typed or mis-shaped entries."""
    expected = tree.state_dict()
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise DynrouteError(f"{source}: entries that are not tensors: {', '.join(not_tensors[:5])}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k} (model {tuple(v.shape)}, stored {tuple(getattr(state[k], 'shape', ()))})"
        for k, v in expected.items()
        if k in state and getattr(state[k], "shape", None) != v.shape
    ]
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mis_shaped),
    ):
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise DynrouteError(
            f"{source} does not match its model spec {tree.spec}: " + "; ".join(problems)
        )
