"""``dynroute data fetch|info``: get the raw files and inspect the built datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynroute.core.errors import DynrouteError
from dynroute.data.datasets import (
    DATASETS,
    DEFAULT_TEST_FRACTION,
    IMAGE_SIZE,
    load_dataset,
)
from dynroute.data.download import FETCHABLE, fetch_dataset
from dynroute.data.readers.image_tree import LISTING_FINGERPRINT
from dynroute.data.sources import (
    CACHE_DIR_ENV,
    find_cifar10,
    find_mnist,
    resolve_cache_dir,
    resolve_data_dir,
)


def _user_kinds() -> list[str]:
    """Prefixes of a user's own data (``folder``, ``npz``)."""
    from dynroute.data.registry import source_kinds

    return [kind.prefix for kind in source_kinds()]


def add_user_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image-size`` and ``--test-fraction``, for datasets from the user's own files."""
    from dynroute.commands.common import config_range, ranged

    parser.add_argument(
        "--image-size",
        type=ranged(config_range("image_size")),
        default=IMAGE_SIZE,
        metavar="N",
        help=f"folder:/npz: datasets: resize images to N x N (default {IMAGE_SIZE}; "
        "built-in datasets are 32 x 32)",
    )
    parser.add_argument(
        "--test-fraction",
        type=ranged(config_range("test_fraction")),
        default=DEFAULT_TEST_FRACTION,
        metavar="F",
        help="folder: datasets without train/ and test/ folders: share of each class held "
        f"out for testing (default {DEFAULT_TEST_FRACTION})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        config_range,
        ranged,
    )

    data = subparsers.add_parser("data", help="download and inspect datasets")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda _args: data.print_help() or 2)

    fetch = commands.add_parser(
        "fetch", help="download the official MNIST / CIFAR-10 files into the data directory"
    )
    add_data_dir_argument(fetch)
    fetch.add_argument(
        "--dataset", choices=[*FETCHABLE, "all"], default="all", help="what to download"
    )
    fetch.set_defaults(func=run_fetch)

    info = commands.add_parser(
        "info", help="describe a dataset, or list datasets and the raw sources found"
    )
    info.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help=f"{', '.join(DATASETS)}, or your own data as folder:PATH or npz:PATH",
    )
    add_data_dir_argument(info)
    add_checksum_argument(info)
    add_user_data_arguments(info)
    info.add_argument(
        "--validation-size", type=ranged(config_range("validation_size")), default=0, metavar="N"
    )
    info.add_argument(
        "--seed", type=ranged(config_range("seed")), default=0, help="colouring / data-split seed"
    )
    info.set_defaults(func=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    names = FETCHABLE if args.dataset == "all" else (args.dataset,)
    for name in names:
        print(f"{name}: fetching into {data_dir}")
        for path, downloaded in fetch_dataset(name, data_dir):
            print(f"  {path}: {'downloaded, checksum OK' if downloaded else 'already present, OK'}")
    return 0


def _describe_sources(data_dir: Path) -> list[str]:
    lines = [f"raw data directory: {data_dir}"]
    if not data_dir.is_dir():
        return [*lines, "  (does not exist; see `dynroute data fetch` or --data-dir)"]
    for label, finder in (("MNIST", find_mnist), ("CIFAR-10", find_cifar10)):
        try:
            source = finder(data_dir)
            found = source.describe() if source else "not found"
        except DynrouteError as exc:
            found = f"problem: {exc}"
        lines.append(f"  {label}: {found}")
    return lines


def run_info(args: argparse.Namespace) -> int:
    data_dir = resolve_data_dir(args.data_dir)
    cache_dir = resolve_cache_dir()
    if args.dataset is None:
        print("datasets:")
        for spec in DATASETS.values():
            cached = sorted(path.name for path in cache_dir.glob(f"{spec.name}-*"))
            status = f" [cached: {', '.join(cached)}]" if cached else ""
            print(f"  {spec.name:8} {spec.description}{status}")
        print(
            "  folder:PATH  your images: PATH/train/<class>/, PATH/test/<class>/ or PATH/<class>/"
        )
        print("  npz:PATH     your arrays: x_train, y_train, x_test, y_test")
        yours = sorted(path.name for kind in _user_kinds() for path in cache_dir.glob(f"{kind}-*"))
        if yours:
            print(f"  [cached from your files: {', '.join(yours)}]")
        print("\n".join(_describe_sources(data_dir)))
        print(f"dataset cache: {cache_dir} (set {CACHE_DIR_ENV} to move it)")
        return 0

    dataset = load_dataset(
        args.dataset,
        data_dir,
        validation_size=args.validation_size,
        seed=args.seed,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
        image_size=args.image_size,
        test_fraction=args.test_fraction,
    )
    manifest = dataset.manifest
    print(f"dataset {dataset.name}: {manifest['description']}")
    print(f"  images: {manifest['image_format']}; seed {manifest['seed']}")
    if "source_layout" in manifest:
        print(f"  read as: {manifest['source_layout']}; pixels: {manifest['source_pixels']}")
        skipped = manifest["skipped_files"]
        examples = f": {', '.join(manifest['skipped_examples'])}" if skipped else ""
        more = ", ..." if skipped > len(manifest["skipped_examples"]) else ""
        print(
            f"  skipped {skipped} files (not images, or outside the class folders){examples}{more}"
        )
    names = dataset.class_names
    print("  classes: " + ", ".join(f"{i}={name}" for i, name in enumerate(names)))
    mirrored = [name for name, flag in zip(names, dataset.mirror_symmetric, strict=True) if flag]
    print(f"  mirror-symmetric (flipped in augmentation): {', '.join(mirrored) or 'none'}")
    for split in ("train", "validation", "test"):
        if split in manifest["sizes"]:
            counts = " ".join(str(count) for count in manifest["class_counts"][split])
            print(f"  {split:10} {manifest['sizes'][split]:6d} examples; per class: {counts}")
    for source in manifest["sources"]:
        mismatch = source["checksum_mismatch"]
        verdict = f"MISMATCH ALLOWED: {', '.join(mismatch)}" if mismatch else "checksums OK"
        if all(entry["expected_md5"] is None for entry in source["files"]):
            verdict = "no official checksum for this kind of copy"
        if source["dataset"] in _user_kinds():
            names = [entry["name"] for entry in source["files"]]
            verdict = (
                "MD5 of the image files' names, sizes and modification times"
                if names == [LISTING_FINGERPRINT]
                else f"MD5 of {', '.join(names)}"
            )
        print(f"  source {source['dataset']}: {source['kind']} at {source['path']}")
        print(f"    checksum {source['checksum']} ({verdict})")
    print(f"  cache: {dataset.path} (built {manifest['created']}, {manifest['build_seconds']} s)")
    return 0
