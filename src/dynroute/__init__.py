"""dynroute: dynamically-routed neural networks (McGill & Perona, ICML 2017).

The names below are what a user builds with (docs/api.md). They resolve on first use, so
``import dynroute`` loads neither torch nor the networks until a name that needs them is
touched; ``dynroute.deploy`` runs exported networks without torch at all.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    # training
    "fit": "dynroute.train.fit",
    "load": "dynroute.train.fit",
    "FitResult": "dynroute.train.fit",
    "TrainConfig": "dynroute.train.config",
    "Trainer": "dynroute.train.trainer",
    # models
    "build_model": "dynroute.nn.models",
    "model_names": "dynroute.nn.models",
    "register_model": "dynroute.nn.models",  # with the built-in models registered first
    "routed_chain": "dynroute.nn.chains",
    "static_truncation": "dynroute.nn.chains",
    "RoutedTree": "dynroute.nn.tree",
    "Node": "dynroute.nn.tree",
    "tree_costs": "dynroute.nn.macs",
    # data
    "load_dataset": "dynroute.data.datasets",
    "BatchLoader": "dynroute.data.loader",
    # routing policies and inference
    "Policy": "dynroute.core.policy",
    "POLICIES": "dynroute.core.policy",
    "EarlyExitEngine": "dynroute.engine.early_exit",
    "evaluate": "dynroute.engine.evaluate",
    "calibrate": "dynroute.policies.calibration",
    # errors
    "DynrouteError": "dynroute.core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dynroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
