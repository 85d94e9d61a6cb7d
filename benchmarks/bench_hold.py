"""Does a MAC budget hold when the inputs drift? A fixed operating point against
``BudgetHold`` (``serve --target-macs M --hold``) on a stream that leaves the validation
distribution and comes back.

The run is exported at its operating point with its operating points (``deployed``). The
stream is a seeded sample of its test images in four phases of ``--phase`` images each:

1. *clean*: the test images as they are;
2. *mixed*: half of them drifted;
3. *drifted*: all drifted;
4. *clean* again.

A drifted image is what another camera sends: the test image turned grayscale and shrunk
to ``--small`` pixels, saved as a PNG and read back as the server reads files
(``dynroute.data.files.read_image_bytes``: resized up to the run's size). Both models see
the same stream in batches of 32. Per phase: mean MACs over its second half (the hold has
settled by then: its window is ``--window`` images) as a share of the budget, accuracy on
the stream's labels, and the hold's drift ratio and point. No timing: the machine may be
busy.

    python benchmarks/bench_hold.py RUN --target-macs 6 [--phase 3000] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from deployed import png_bytes, test_sample
from dynroute.data.files import read_image_bytes
from dynroute.delivery.export import export_run
from dynroute.deploy import load
from dynroute.deploy.budget import DEFAULT_WINDOW, BudgetHold
from timing import save_results

BATCH = 32


def drifted(image: np.ndarray, small: int) -> np.ndarray:
    """``image`` as a small grayscale PNG, read back at the image's size."""
    picture = Image.open(io.BytesIO(png_bytes(image))).convert("L").resize((small, small))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return read_image_bytes(buffer.getvalue(), "drifted.png", image.shape[-1])


def stream(x: np.ndarray, y: np.ndarray, phase: int, small: int) -> list[tuple]:
    """The four phases as (name, images, labels)."""
    rng = np.random.default_rng(1)
    phases = []
    for k, (name, share) in enumerate(
        [("clean", 0.0), ("mixed", 0.5), ("drifted", 1.0), ("clean again", 0.0)]
    ):
        index = rng.choice(len(x), phase, replace=phase > len(x))
        images = x[index].copy()
        for i in np.flatnonzero(rng.random(phase) < share):
            images[i] = drifted(images[i], small)
        phases.append((name, images, y[index]))
        print(f"phase {k + 1} ({name}) ready", flush=True)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory (calibrated: a policy with thresholds)")
    parser.add_argument("--target-macs", type=float, required=True, help="millions of MACs")
    parser.add_argument("--phase", type=int, default=3000, help="images per phase")
    parser.add_argument("--small", type=int, default=12, help="a drifted image's side")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    target = args.target_macs * 1e6
    x, y = test_sample(args.run, 10_000)
    phases = stream(x, y, args.phase, args.small)
    with tempfile.TemporaryDirectory() as temporary:
        export_run(args.run, Path(temporary) / "export", check=0)
        model = load(Path(temporary) / "export", threads=1)
        fixed, point = model.for_budget(target)
        hold = BudgetHold(model, target, window=args.window)
        rows = []
        for name, images, labels in phases:
            row: dict = {"phase": name, "images": len(images)}
            for label, predict in (("fixed", fixed.predict), ("hold", hold.predict)):
                macs, correct = [], []
                for i in range(0, len(images), BATCH):
                    prediction = predict(images[i : i + BATCH])
                    macs.append(prediction.macs)
                    correct.append(prediction.predictions == labels[i : i + BATCH])
                settled = np.concatenate(macs)[len(images) // 2 :]
                row[label] = {
                    "mean_macs_second_half": float(settled.mean()),
                    "share_of_budget": float(settled.mean() / target),
                    "accuracy": float(np.concatenate(correct).mean()),
                }
            row["hold"]["state"] = hold.state()
            rows.append(row)
            print(
                f"{name:<12} fixed {row['fixed']['share_of_budget']:6.1%} of the budget, "
                f"accuracy {row['fixed']['accuracy']:.4f} | hold "
                f"{row['hold']['share_of_budget']:6.1%}, accuracy {row['hold']['accuracy']:.4f}, "
                f"drift ratio {hold.ratio:.2f}, point at {hold.current.mean_macs / 1e6:.2f} M "
                f"on validation, {hold.moves} moves so far",
                flush=True,
            )
    from dynroute.platform.devices import machine_description

    save_results(
        {
            "machine": machine_description(),
            "run": str(args.run),
            "target_macs": target,
            "fixed_point": {k: point[k] for k in ("accuracy", "mean_macs") if k in point},
            "window": args.window,
            "small": args.small,
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
