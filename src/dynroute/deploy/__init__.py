"""Run exported networks without PyTorch: NumPy and onnxruntime only.

``dynroute export RUN --out DIR`` writes an export (``dynroute.deploy.manifest`` describes
the folder); this package loads it and runs real early exit::

    from dynroute.deploy import load

    model = load("exports/chain")           # checks every file's SHA-256 first
    prediction = model.predict(images)      # float32 (N, 3, 32, 32), linear intensity [0, 1]
    prediction.predictions, prediction.exits, prediction.macs

Nothing here imports torch (``pip install 'dynroute[deploy]'`` is enough to run an
export); onnxruntime is imported when a model is loaded. The policy's decisions are
``dynroute.core.decisions``, the same code the PyTorch engine decides with. See docs/deploy.md.
"""

from __future__ import annotations

from dynroute.deploy.manifest import MANIFEST_FILE, read_manifest
from dynroute.deploy.runtime import ExportedModel, ExportPrediction, load

__all__ = ["MANIFEST_FILE", "ExportPrediction", "ExportedModel", "load", "read_manifest"]
