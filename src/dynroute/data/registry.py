"""The data layer's registry: the kinds of dataset names beside the built-in ones.

A *source kind* is the prefix of a dataset name such as ``folder:PATH`` (an image tree or
.zip) or ``npz:PATH`` (arrays), with the loader that builds it. Kinds register themselves
here (``dynroute.data.user_data`` registers both), so ``load_dataset`` dispatches on the
prefix without importing the modules that implement them; importing ``dynroute.data``
registers every built-in kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynroute.core.errors import DynrouteError

#: ``loader(name, kind, path_text, *, cache_dir, validation_size, seed, image_size,
#: test_fraction) -> DatasetSplits``.
Loader = Callable[..., Any]


@dataclass(frozen=True)
class SourceKind:
    """A prefix of dataset names (``folder``), what it reads, and its loader."""

    prefix: str
    description: str
    loader: Loader


_KINDS: dict[str, SourceKind] = {}


def register_source_kind(prefix: str, description: str) -> Callable[[Loader], Loader]:
    """Register ``loader`` for dataset names ``PREFIX:PATH``; a prefix registers once."""

    def wrap(loader: Loader) -> Loader:
        if prefix in _KINDS:
            raise DynrouteError(f"a dataset source kind {prefix!r} is already registered")
        _KINDS[prefix] = SourceKind(prefix, description, loader)
        return loader

    return wrap


def source_kind(prefix: str) -> SourceKind | None:
    return _KINDS.get(prefix)


def source_kinds() -> list[SourceKind]:
    return list(_KINDS.values())
