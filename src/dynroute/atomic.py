"""Atomic, durable file writes: the one way dynroute writes a file someone relies on.

A file is written to a temporary sibling, flushed and fsynced, renamed over the
target, and then the folder is fsynced so that the rename itself survives a power
cut. A reader therefore sees the old file or the new one, never half of one; a
killed writer leaves at most a hidden ``.*.tmp`` file, which is removed if the
writer fails normally.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename or new entry in ``folder`` durable (no-op where folders can't be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover - file systems without folder fsync
        pass
    finally:
        os.close(handle)


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file and move it to ``path`` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 1) -> Path:
    """JSON with a trailing newline, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_json_object(path: str | os.PathLike[str], what: str, hint: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object; any failure is a ``DynrouteError`` naming the
    file as ``what`` (e.g. "result file"), followed by ``hint`` (what to do about it)."""
    from dynroute.errors import DynrouteError

    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DynrouteError(f"{what} {path} is unreadable or corrupt ({exc}){tail}") from None
    if not isinstance(data, dict):
        raise DynrouteError(f"{what} {path} does not hold a JSON object{tail}")
    return data
