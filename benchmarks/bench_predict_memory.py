"""Does ``dynroute predict``'s memory stay flat however many images it classifies?

An 8x8 uint8 image takes 64 bytes in an array file and 12,288 bytes as 32x32 network input
(3 x 32 x 32 float32): 192 times more. ``predict`` reads arrays a block of rows at a time
and decodes a few batches ahead, so its peak memory should not grow with the array. This
script writes ``.npy`` arrays of 10,000, 100,000 and 1,000,000 random 8x8 images, runs
``dynroute predict EXPORT ARRAY`` on each in a child process (rows to /dev/null through
stdout), and prints each child's peak resident memory (``VmHWM``), its time and its images
per second.

The export is the registry's ``chain`` at 32x32 with random weights (weights do not change
memory or speed), unless ``--export`` names one. Exporting needs torch and onnx; the runs
themselves do not import torch.

    python benchmarks/bench_predict_memory.py [--counts 10000,100000,1000000] [--export DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 8  # pixels a side of each stored image


def make_export(folder: Path, image_size: int) -> Path:
    """The registry's chain, random weights, exported (no check: nothing to compare)."""
    import torch

    from dynroute.data.files import preprocessing
    from dynroute.delivery.export import export_tree
    from dynroute.nn.models import build_model

    torch.manual_seed(0)
    tree = build_model("chain", num_classes=10, image_size=image_size)
    export_tree(tree, folder, preprocessing=preprocessing(None, image_size))
    return folder


#: ``dynroute ARGV`` in a fresh interpreter that writes its peak resident memory (VmHWM, in
#: KB) to ``sys.argv[1]`` at exit. Not ``ru_maxrss`` from ``wait4``: Linux carries the
#: parent's high-water mark into it across fork and exec (here, torch and the arrays).
CHILD = """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(sys.argv[1], "w").write(line.split()[1])
atexit.register(peak)
from dynroute.cli import main
sys.exit(main(sys.argv[2:]))
"""


def peak_run(argv: list[str], report: Path) -> tuple[int, float, float]:
    """Exit status, seconds and peak resident MB of ``dynroute ARGV`` in a child process."""
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        sys.stderr.write(child.stderr.decode(errors="replace"))
        return child.returncode, seconds, 0.0
    return 0, seconds, int(report.read_text()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="10000,100000,1000000", help="images per array")
    parser.add_argument("--export", default=None, help="an export folder (default: the chain)")
    parser.add_argument(
        "--image-size", type=int, default=32, help="of the default export (or of --export's)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-predict-memory-") as work:
        folder = Path(work)
        size = args.image_size
        export = Path(args.export) if args.export else make_export(folder / "chain", size)
        rng = np.random.default_rng(0)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}; export {export}")  # fmt: skip
        print(f"# predict --batch-size {args.batch_size}: peak resident memory of the process")
        print(f"| images | array file | as {size} px input | peak RSS | seconds | images/s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for count in counts:
            array = folder / f"images-{count}.npy"
            np.save(array, rng.integers(0, 256, (count, SIDE, SIDE), dtype=np.uint8))
            argv = ["predict", str(export), str(array), "--no-progress", "--batch-size",
                    str(args.batch_size)]  # fmt: skip
            code, seconds, peak = peak_run(argv, folder / "peak")
            array.unlink()
            if code != 0:
                print(f"| {count:,} | predict failed with status {code} | | | | |")
                continue
            print(
                f"| {count:,} | {count * SIDE * SIDE / 1e6:.1f} MB | "
                f"{count * 3 * size * size * 4 / 1e9:.2f} GB | {peak:.0f} MB | {seconds:.1f} | "
                f"{count / seconds:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
