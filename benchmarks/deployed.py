"""What the deployment benchmarks share: a run's test sample, its images as the files a
client sends, and the static net of the routed net's accuracy, exported beside it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dynroute.delivery.export import export_run, export_tree
from dynroute.deploy import load
from dynroute.nn.models import build_model
from dynroute.runs import open_run

SAMPLE = 2048


def test_sample(run_dir: str, size: int = SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of a run's test images (and labels), shuffled so that batches mix
    the split's kinds of images (the hybrid split is ordered: digits first)."""
    images, labels, _ = open_run(run_dir).split("test")
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(images), min(size, len(images)), replace=False))
    order = rng.permutation(len(sample))
    return np.array(images[sample])[order], np.asarray(labels)[sample][order]


def png_bytes(image: np.ndarray) -> bytes:
    """A linear-intensity (3, H, W) image as the 8-bit PNG it was decoded from."""
    pixels = np.clip(np.round(image.transpose(1, 2, 0) ** (1 / 2.2) * 255), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def pick_static(folder: Path, accuracy: float) -> tuple[str, float, float]:
    """(name, test accuracy, MACs) of the cheapest static net at least as accurate as
    ``accuracy`` in a sweep's result files (the most accurate one if none is)."""
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        found.append((data["network"], data["accuracy"], data["mean_macs"]))
    if not found:
        raise SystemExit(f"no sweep results in {folder}")
    good = [f for f in found if f[1] >= accuracy]
    return min(good, key=lambda f: f[2]) if good else max(found, key=lambda f: f[1])


def test_accuracy(model, run_dir: str, batch: int = 256) -> float:
    """An export's accuracy on its run's whole test split."""
    images, labels, _ = open_run(run_dir).split("test")
    correct = 0
    for i in range(0, len(images), batch):
        predicted = model.predict(np.array(images[i : i + batch])).predictions
        correct += int((predicted == np.asarray(labels[i : i + batch])).sum())
    return correct / len(images)


def export_static(name: str, folder: Path) -> Path:
    """The registry's ``name`` exported to ``folder`` (untrained: weights do not change
    speed), unless an earlier call put it there."""
    if not (folder / "manifest.json").exists():
        export_tree(build_model(name).eval(), folder)
    return folder


def export_pair(
    run_dir: str,
    folder: Path,
    static_results: Path,
    static: str | None = None,
    threads: int = 1,
    batch: int = 256,
) -> dict:
    """Export the run at its operating point (with ``dense.onnx`` and its operating points)
    and the static net of the same test accuracy (``static``, else chosen from the sweep's
    ``static_results``; built from the registry: its weights do not change its speed).
    Returns both loaded models, their folders, the routed test accuracy and the choice."""
    routed_dir, static_dir = folder / "routed", folder / "static"
    manifest, how, _ = export_run(run_dir, routed_dir, dense=True, check=0)
    routed = load(routed_dir, threads=threads)
    accuracy = test_accuracy(routed, run_dir, batch)
    static_accuracy = None
    if static is None:
        static, static_accuracy, _ = pick_static(static_results, accuracy)
    export_static(static, static_dir)
    return {
        "routed": routed,
        "routed_dir": routed_dir,
        "static": load(static_dir, threads=threads),
        "static_dir": static_dir,
        "static_name": static,
        "static_accuracy_in_sweep": static_accuracy,
        "test_accuracy": accuracy,
        "manifest": manifest,
        "how": how,
    }


def throughput(
    models: dict, x: np.ndarray, rounds: int, batch: int = 256
) -> dict[str, list[float]]:
    """Seconds per pass over ``x`` in batches of ``batch``, the models interleaved in every
    round (a machine's speed drifts)."""
    for predict in models.values():
        predict(x[:batch])
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, predict in models.items():
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                predict(x[i : i + batch])
            seconds[name].append(time.perf_counter() - start)
    return seconds
