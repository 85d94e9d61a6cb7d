"""dynroute: dynamically-routed neural networks.

``dynroute.fit`` trains a network from Python, ``dynroute.load`` reads one back
(``dynroute.train.fit``). They are imported on first use, so that ``import dynroute.nn`` and the
command line do not load the trainer.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FitResult", "fit", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dynroute.train import fit as api

        return getattr(api, name)
    raise AttributeError(f"module 'dynroute' has no attribute {name!r}")
