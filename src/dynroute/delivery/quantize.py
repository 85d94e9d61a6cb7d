"""int8 exports that keep early exit: every ONNX model of an export quantized on its own.

``dynroute export RUN --int8`` first writes the float32 export, then:

1. runs it on calibration images of the run's validation split, every model on every
   example (``ExportedModel.every_exit``), recording each model's inputs;
2. quantizes each model statically (onnxruntime, QDQ, int8 weights per output channel,
   uint8 activations calibrated on those inputs), so segments, heads and routers stay
   separate models and the runtime still skips what an example does not reach; a model
   keeps its int8 version only where that runs at least ``FASTER_BY`` times as fast as the
   float32 one on those inputs, on this machine (a first layer on three colour channels or
   a small head is memory-bound: quantizing its input and de-quantizing its output costs
   more than int8 arithmetic saves);
3. re-fits the operating point on the int8 answers: the same policy family chosen for the
   same target on the validation split (thresholds move when answers change), and measures
   the operating points a budget is later chosen among on them too;
4. checks the result against the float32 export on the test split: accuracy, mean MACs and
   the share of images given the same class.

The manifest records ``"precision": "int8"``; the torch-free runtime, ``predict`` and
``serve`` run it unchanged. A guarantee certified on float32 answers does not carry over to
int8 ones: the int8 export carries none (calibrate and export again for one).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError

#: Calibration images per model (the validation split's first ones, fixed).
CALIBRATION_IMAGES = 512
#: Images per calibration batch fed to onnxruntime's calibrator.
CALIBRATION_BATCH = 64
#: How many times as fast an int8 model must run as its float32 one to replace it.
FASTER_BY = 1.1
#: Timing rounds per model (float32 and int8 taking turns; the fastest round counts).
TIMING_ROUNDS = 3


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise DynrouteError(
            "an int8 export needs onnxruntime's quantization tools: pip install 'dynroute[deploy]'"
        ) from None
    return quantization


class _Feeds:
    """The recorded inputs of one model, one batch at a time (onnxruntime's calibration
    data reader protocol)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # the static calibrator reads once
        pass


def quantize_models(
    folder: str | os.PathLike[str], images: np.ndarray, k_cpt: Any = None
) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    """Every model file of the float32 export in ``folder`` (of a fixed-k_cpt net),
    quantized on ``images`` (the calibration inputs, in the export's input layout).

    Returns the int8 model bytes to use (file name -> bytes: the models whose int8 version
    runs ``FASTER_BY`` times as fast) and, for every model, what decided it: its float32
    and int8 milliseconds on the calibration inputs and the precision kept."""
    from dynroute.deploy import load

    quantization = _quantization()
    model = load(folder)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    for start in range(0, len(images), CALIBRATION_BATCH):
        model.every_exit(images[start : start + CALIBRATION_BATCH], k_cpt, feeds)
    files = {
        entry["file"] for key in ("segments", "heads", "routers") for entry in model.manifest[key]
    }
    out: dict[str, bytes] = {}
    record: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dynroute-int8-") as scratch:
        for name in sorted(files):
            target = Path(scratch) / name
            quantization.quantize_static(
                str(Path(folder) / name),
                str(target),
                _Feeds(feeds[name]),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
            )
            float32_ms, int8_ms = _milliseconds([Path(folder) / name, target], feeds[name])
            keep = float32_ms >= FASTER_BY * int8_ms
            record[name] = {
                "float32_ms": round(float32_ms, 4),
                "int8_ms": round(int8_ms, 4),
                "precision": "int8" if keep else "float32",
            }
            if keep:
                out[name] = target.read_bytes()
    return out, record


def _milliseconds(paths: list[Path], batches: list[dict[str, np.ndarray]]) -> list[float]:
    """Each model's time over ``batches`` (one thread, the models taking turns; the
    fastest of ``TIMING_ROUNDS`` rounds): what decides whether int8 pays on this machine."""
    import onnxruntime

    from dynroute.deploy.runtime import session_options

    sessions = [
        onnxruntime.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
        for p in paths
    ]
    best = [float("inf")] * len(sessions)
    for round_ in range(TIMING_ROUNDS + 1):  # the first round warms up
        for i, session in enumerate(sessions):
            started = time.perf_counter()
            for batch in batches:
                session.run(None, batch)
            if round_:
                best[i] = min(best[i], (time.perf_counter() - started) * 1000)
    return best


def exit_outputs(folder: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray,
                 k_cpt: Any = None) -> Any:  # fmt: skip
    """An export's dense outputs on a split (every exit's answer, every router's scores), as
    the policy layer's ``DenseOutputs``: what an operating point is fitted on."""
    from dynroute.deploy import load
    from dynroute.policies.exit_table import DenseOutputs

    model = load(folder)
    logits, scores = [], {j: [] for j in model.junctions}
    for start in range(0, len(images), 500):
        answers, routed = model.every_exit(images[start : start + 500], k_cpt)
        logits.append(answers)
        for j, s in routed.items():
            scores[j].append(s)
    return DenseOutputs(
        np.concatenate(logits).astype(np.float32),
        {j: np.concatenate(s) for j, s in scores.items() if s},
        np.asarray(labels, dtype=np.int64),
    )


def compare(
    first: str | os.PathLike[str], second: str | os.PathLike[str], images: np.ndarray,
    labels: np.ndarray, k_cpt: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Two exports routed on the same images at their own operating points: each one's
    accuracy and mean MACs, and the share of images they give the same class."""
    from dynroute.deploy import load

    out: dict[str, Any] = {"examples": int(len(labels))}
    predictions = []
    for name, folder in (("float32", first), ("int8", second)):
        model = load(folder)
        classes, macs = [], []
        for start in range(0, len(images), 500):
            routed = model.predict(images[start : start + 500], k_cpt)
            classes.append(routed.predictions)
            macs.append(routed.macs)
        predicted = np.concatenate(classes)
        predictions.append(predicted)
        out[name] = {
            "accuracy": float((predicted == labels).mean()),
            "mean_macs": float(np.concatenate(macs).mean()),
        }
    out["same_class"] = float((predictions[0] == predictions[1]).mean())
    out["accuracy_difference"] = out["int8"]["accuracy"] - out["float32"]["accuracy"]
    return out
