"""Classify inputs with a run or an export: one interface over both, rows and totals.

``open_predictor(path)`` opens a run directory (the PyTorch early-exit engine, batch norm
folded) or an export folder (``dynroute.deploy``, no torch), at the run's calibrated
operating point or the export's, or at another one given by ``policy``, ``threshold`` or
``target_macs``. ``dynroute predict`` and ``dynroute serve`` are built on it. Nothing here
imports torch unless a run is opened.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core.errors import DynrouteError
from dynroute.core.operating import OperatingRequest
from dynroute.core.policy import Policy
from dynroute.data.files import Failure
from dynroute.deploy.manifest import MANIFEST_FILE
from dynroute.deploy.runtime import ExportPrediction
from dynroute.io.gate import printable

#: Columns of ``dynroute predict``'s rows (CSV header, JSON keys).
ROW_FIELDS = ("file", "class", "confidence", "exit", "macs")


def is_export(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def _entry(path: str | os.PathLike[str]) -> str:
    """The real path of the directory entry ``path`` names (its folder resolved, its own
    name kept): what a rename onto ``path`` replaces."""
    path = Path(path)
    return os.path.join(os.path.realpath(path.parent), path.name)


def _within(real: str, folder: str) -> bool:
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def check_outputs(
    model: str | os.PathLike[str],
    inputs: list[str],
    outputs: dict[str, str | os.PathLike[str] | None],
) -> None:
    """Refuse, before any work, an output (option -> path: ``--out``, ``--totals``) that
    would replace what it must not: anything but a regular file (a device such as
    ``/dev/null``, a FIFO, a link, a folder: ``dynroute.io.atomic.check_target``), a file of
    the run or export being run, an input (a file named, or one a folder named would
    read), or another output."""
    from dynroute.io.atomic import check_target

    model = Path(model)
    real_model = os.path.realpath(model)
    kind = "export folder" if is_export(model) else "run directory"
    claimed: dict[str, str] = {}
    for option, name in outputs.items():
        if name is None:
            continue
        if not str(name):
            raise DynrouteError(f"{option} is empty: name a file")
        try:
            exists = check_target(name)
        except DynrouteError as exc:
            raise DynrouteError(f"{option}: {exc}") from None
        real = _entry(name)
        if model.is_dir() and _within(real, real_model):
            raise DynrouteError(
                f"{option} {name} is inside the {kind} {model}, which is being run; write elsewhere"
            )
        if real == real_model:
            raise DynrouteError(f"{option} {name} is the checkpoint being run; write elsewhere")
        for other, taken in claimed.items():
            if taken == real:
                raise DynrouteError(f"{other} and {option} name the same file {name}")
        claimed[option] = real
        if not exists:
            continue  # a new file is no input: the folders are walked before it is created
        for given in inputs:
            folder = os.path.realpath(given)
            if real == folder or (
                os.path.isdir(folder)
                and _within(real, folder)
                and not any(part.startswith(".") for part in Path(real[len(folder) :]).parts)
            ):
                raise DynrouteError(f"{option} {name} is one of the inputs; write elsewhere")


@dataclass
class Predictor:
    """A network ready to classify: ``predict(x)`` on float32 (N, *input_shape) batches."""

    path: Path
    kind: str  # "run" or "export"
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    exit_names: dict[int, str]
    policy: dict[str, Any]
    k_cpt: float | None
    how: str
    backend: Any = field(repr=False)
    #: The guarantee the operating point was certified with (``calibrate --delta``), if any.
    guarantee: dict[str, Any] | None = None
    #: The ``ExportedModel`` behind an export's predictor (None for a run).
    model: Any = field(default=None, repr=False)

    @property
    def image_size(self) -> int | None:
        """The square side images are resized to, or None for a network of other inputs."""
        shape = self.input_shape
        if len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]:
            return int(shape[1])
        return None

    def predict(self, x: np.ndarray) -> ExportPrediction:
        return self.backend(x)

    def describe(self) -> str:
        policy = self.policy
        setting = Policy.from_dict(policy).label()
        if policy.get("thresholds") is not None:
            setting += " (a threshold per exit)"
        if self.k_cpt is not None:
            setting += f", k_cpt {self.k_cpt:g}"
        engine = "PyTorch engine" if self.kind == "run" else "onnxruntime"
        text = f"{self.kind} {self.path}: {setting} ({self.how}); {engine}"
        if self.guarantee is not None:
            text += f"; guaranteed: {self.guarantee['promise']}"
        return text

    def rows(self, names: list[str] | None, prediction: ExportPrediction) -> list[dict[str, Any]]:
        """One row per example: file, class name, confidence, exit name, MACs (no file
        where ``names`` is None: the server names each request's rows itself)."""
        labels = prediction.predictions.tolist()
        confidences = prediction.confidences.tolist()
        rows = [
            {
                "class": printable(self.class_names[label]),
                "confidence": round(confidence, 6),
                "exit": self.exit_names[exit_index],
                "macs": macs,
            }
            for label, confidence, exit_index, macs in zip(
                labels, confidences, prediction.exits.tolist(), prediction.macs.tolist(),
                strict=True,
            )
        ]  # fmt: skip
        if names is None:
            return rows
        return [{"file": printable(name), **row} for name, row in zip(names, rows, strict=True)]


def open_predictor(
    path: str | os.PathLike[str],
    *,
    policy: str | None = None,
    threshold: float | None = None,
    target_macs: float | None = None,
    k_cpt: float | None = None,
    threads: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
    answers: str | None = None,
) -> Predictor:
    """A run directory (or checkpoint) or an export folder, ready to classify at the
    operating point asked (``dynroute.core.operating``: resolved alike for both)."""
    request = OperatingRequest(policy, threshold, target_macs, k_cpt, answers)
    path = Path(path)
    if is_export(path):
        from dynroute.deploy import load

        model = load(path, threads=threads)
        resolved, how = model.resolve(request)
        predictor = _export_predictor(path, resolved, how)
        if resolved is model:  # the certified operating point, unchanged
            predictor.guarantee = model.manifest.get("guarantee")
        return predictor
    if not path.exists():
        raise DynrouteError(f"no such export folder or run directory: {path}")
    from dynroute.policies.resolve import resolve_operating_point
    from dynroute.runs import open_run

    run = open_run(path)
    point = resolve_operating_point(
        run,
        **request.options(),
        data_dir=data_dir,
        allow_checksum_mismatch=allow_checksum_mismatch,
    )
    predictor = _open_run(run, point.policy, point.k_cpt, point.how, threads)
    predictor.guarantee = point.guarantee
    return predictor


def _export_predictor(path: Path, model: Any, how: str) -> Predictor:
    def backend(x: np.ndarray) -> ExportPrediction:
        return model.predict(x)

    return Predictor(
        path,
        "export",
        model.class_names,
        model.input_shape,
        dict(model.exit_names),
        model.policy,
        model.k_cpt,
        how,
        backend,
        model=model,
    )


def _open_run(run: Any, policy: Policy, k_cpt: float | None, how: str, threads: int | None):
    import torch

    from dynroute.engine.early_exit import EarlyExitEngine
    from dynroute.platform.devices import configure_cpu

    configure_cpu(threads)
    tree = run.load_tree().eval()
    engine = EarlyExitEngine(tree, policy=policy, fold_batchnorm=True)
    engine.default_k_cpt = k_cpt
    exit_names = {leaf: tree.nodes[leaf].name for leaf in tree.leaves}

    def backend(x: np.ndarray) -> ExportPrediction:
        result = engine.predict(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return ExportPrediction(
            result.logits.float().numpy(), result.exits.numpy(), result.macs.numpy()
        )

    return Predictor(
        run.path,
        "run",
        run.class_names(tree.num_classes),
        tuple(tree.input_shape),
        exit_names,
        policy.to_dict(),
        k_cpt,
        how,
        backend,
    )


@dataclass
class Totals:
    """What a prediction run adds up to: examples, MACs, exits taken, time, failures."""

    exit_names: dict[int, str]
    count: int = 0
    macs: int = 0
    exits: Counter = field(default_factory=Counter)
    model_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    failures: list[Failure] = field(default_factory=list)

    def add(self, prediction: ExportPrediction, seconds: float) -> None:
        self.count += len(prediction)
        self.macs += int(prediction.macs.sum())
        self.exits.update(int(e) for e in prediction.exits)
        self.model_seconds += seconds

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        return {
            "images": self.count,
            "mean_macs": self.macs / self.count if self.count else None,
            "exits": {name: self.exits.get(leaf, 0) for leaf, name in self.exit_names.items()},
            "seconds": round(wall, 3),
            "images_per_second": round(self.count / wall, 1) if wall > 0 else None,
            "model_images_per_second": (
                round(self.count / self.model_seconds, 1) if self.model_seconds > 0 else None
            ),
            "unreadable": [{"file": f.name, "reason": f.reason} for f in self.failures],
        }

    def format(self) -> str:
        s = self.summary()
        if not s["images"]:
            lines = ["no image was classified"]
        else:
            exits = ", ".join(
                f"{name} {count} ({100 * count / s['images']:.0f} %)"
                for name, count in s["exits"].items()
                if count
            )
            lines = [
                f"{s['images']} images in {s['seconds']:.2f} s: {s['images_per_second']:g} "
                f"images/s (the network alone: {s['model_images_per_second']:g} images/s)",
                f"mean MACs {s['mean_macs'] / 1e6:.3f} M per image",
                f"exits: {exits}",
            ]
        if s["unreadable"]:
            lines.append(f"{len(s['unreadable'])} unreadable, skipped:")
            lines += [f"  {f['file']}: {f['reason']}" for f in s["unreadable"]]
        return "\n".join(lines)
