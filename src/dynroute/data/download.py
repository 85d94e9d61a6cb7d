"""Download the official MNIST and CIFAR-10 files (urllib only).

Downloads go to a temp file next to the destination and are renamed into place
only after the checksum matched, so an interrupted or corrupt download never
looks like a valid copy. Connection attempts time out after a few seconds, and
the first file that cannot be fetched from any mirror stops the run with a
message that lists what was tried and how to use a local copy instead.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from dynroute.core.errors import DynrouteError
from dynroute.data import sources
from dynroute.data.readers.common import (
    md5_bytes,
    md5_file,
    read_bytes,
)
from dynroute.data.readers.mnist_idx import gunzip
from dynroute.data.sources import CIFAR_ARCHIVE_NAME, LOCAL_COPY_HINT
from dynroute.io.atomic import AtomicFile

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CIFAR_URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
CONNECT_TIMEOUT = 5.0
FETCHABLE = ("mnist", "cifar10")


def _gunzipped_md5(path: Path) -> str:
    try:
        # Temp downloads have no .gz suffix, so decompress explicitly.
        return md5_bytes(gunzip(read_bytes(path), path))
    except DynrouteError:
        return "not-a-valid-gzip-file"


def _download(url: str, handle: AtomicFile, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``handle`` with a progress bar."""
    request = urllib.request.Request(url, headers={"User-Agent": "dynroute"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=url.rsplit("/", 1)[-1],
            disable=None if progress else True,  # None: only on a terminal
            leave=False,
        ) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                handle.write(block)
                bar.update(len(block))
        handle.flush()


class _Rejected(Exception):
    """A mirror's download failed or did not match its checksum: try the next one."""


def fetch_file(
    urls: list[str],
    destination: Path,
    expected_md5: str,
    checksum: Callable[[Path], str],
    *,
    timeout: float = CONNECT_TIMEOUT,
    progress: bool = True,
) -> bool:
    """Make ``destination`` a verified copy; returns False if it already was one. Each try
    goes to an ``AtomicFile``, put in place only once its checksum matched, so that an
    interrupted or corrupt download never looks like a valid copy; a full disk stops at
    once, naming the file."""
    if destination.is_file() and checksum(destination) == expected_md5:
        return False
    failures = []
    for url in urls:
        try:
            with AtomicFile(destination) as handle:
                try:
                    _download(url, handle, timeout, progress)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if handle.error is not None:  # writing failed, not the mirror
                        raise
                    raise _Rejected(f"{url} ({getattr(exc, 'reason', None) or exc})") from None
                actual = checksum(handle.temporary)
                if actual != expected_md5:
                    raise _Rejected(f"{url} (wrong MD5 {actual}, expected {expected_md5})")
        except _Rejected as rejected:
            failures.append(str(rejected))
            continue
        return True
    raise DynrouteError(
        f"could not download {destination.name}; tried: {'; '.join(failures)}. "
        f"Without internet access, {LOCAL_COPY_HINT}"
    )


def fetch_dataset(
    dataset: str,
    data_dir: Path,
    *,
    timeout: float = CONNECT_TIMEOUT,
    progress: bool = True,
    mnist_mirrors: tuple[str, ...] | None = None,
    cifar_urls: tuple[str, ...] | None = None,
) -> list[tuple[Path, bool]]:
    """Download the official files of ``dataset`` into ``data_dir``.

    Returns (path, downloaded) pairs; ``downloaded`` is False for files that
    were already present and verified.
    """
    if dataset == "mnist":
        results = []
        for name, md5 in sources.MNIST_MD5.items():
            path = data_dir / "mnist" / f"{name}.gz"
            urls = [f"{mirror}{name}.gz" for mirror in mnist_mirrors or MNIST_MIRRORS]
            fetched = fetch_file(
                urls, path, md5, _gunzipped_md5, timeout=timeout, progress=progress
            )
            results.append((path, fetched))
        return results
    if dataset == "cifar10":
        path = data_dir / CIFAR_ARCHIVE_NAME
        fetched = fetch_file(
            list(cifar_urls or CIFAR_URLS),
            path,
            sources.CIFAR_ARCHIVE_MD5,
            md5_file,
            timeout=timeout,
            progress=progress,
        )
        return [(path, fetched)]
    raise DynrouteError(f"cannot fetch {dataset!r}; choose one of: {', '.join(FETCHABLE)}, all")
