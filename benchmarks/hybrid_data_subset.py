"""Write the smallest data folder that builds the hybrid dataset, for a remote GPU.

The hybrid dataset reads MNIST and five CIFAR-10 classes. This copies the MNIST files
and writes a CIFAR-10 image zip holding those five classes in full and one image of each
other class (the layout check wants all ten folders): about 40 MB instead of 73, and the
same hybrid arrays as the full copy. Used to send data along with ``gpu_check.sh`` where
uploads are limited.

    python benchmarks/hybrid_data_subset.py DEST [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

from dynroute.data.datasets import HYBRID_CIFAR
from dynroute.data.sources import find_source, resolve_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    data_dir = resolve_data_dir(args.data_dir)
    dest = Path(args.dest)
    (dest / "mnist").mkdir(parents=True, exist_ok=True)
    for path in find_source("mnist", data_dir).files:
        shutil.copy(path, dest / "mnist" / path.name)
    cifar = find_source("cifar10", data_dir)
    if cifar.kind != "image-zip":
        raise SystemExit(f"expected a CIFAR-10 image zip, found {cifar.describe()}")
    seen: set[tuple[str, str]] = set()
    with (
        zipfile.ZipFile(cifar.path) as source,
        zipfile.ZipFile(dest / "cifar10-hybrid-subset.zip", "w", zipfile.ZIP_STORED) as out,
    ):
        for info in source.infolist():
            parts = info.filename.rstrip("/").split("/")
            if len(parts) >= 3 and parts[-2] not in HYBRID_CIFAR and not info.is_dir():
                folder = (parts[-3], parts[-2])
                if folder in seen:
                    continue
                seen.add(folder)
            out.writestr(info, source.read(info))
    print(f"wrote {dest}: MNIST and {dest / 'cifar10-hybrid-subset.zip'}")


if __name__ == "__main__":
    main()
