"""Atomic, durable file writes: the one way dynroute writes a file someone relies on.

A file is written to a temporary sibling, flushed and fsynced, renamed over the
target, and then the folder is fsynced so that the rename itself survives a power
cut. A reader therefore sees the old file or the new one, never half of one; a
killed writer leaves at most a hidden ``.*.tmp`` file, which is removed if the
writer fails normally. A write that fails (a full disk, a read-only or unwritable
folder) is a ``DynrouteError`` naming the path and the reason, and the previous
version of the file is left as it was.

Lines appended to a log (``append_line``) are written whole or not at all, and a
``FolderLock`` keeps a folder to one writing process at a time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dynroute import gate
from dynroute.errors import DynrouteError

try:  # POSIX; elsewhere a folder lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: What a failed write's errno means for the user, where ``strerror`` is not enough.
_REASONS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def os_reason(exc: OSError) -> str:
    """The short reason of a failed file operation ("the file system is read-only")."""
    return _REASONS.get(exc.errno, exc.strerror or str(exc))


def cannot_write(
    path: str | os.PathLike[str], exc: OSError, kept: bool | None = None
) -> DynrouteError:
    """The one message for a write that failed: the path, why, and what is left.

    ``kept``: whether a previous version of ``path`` survives (None: say nothing about it).
    """
    if kept is None:
        tail = ""
    elif kept:
        tail = "; its previous version is kept"
    else:
        tail = "; nothing was written"
    return DynrouteError(f"cannot write {path}: {os_reason(exc)}{tail}")


def make_folder(folder: str | os.PathLike[str], what: str = "folder") -> Path:
    """``mkdir -p``, or a ``DynrouteError`` naming the folder and the reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DynrouteError(f"cannot create the {what} {folder}: a file is in the way") from None
    except OSError as exc:
        raise DynrouteError(f"cannot create the {what} {folder}: {os_reason(exc)}") from None
    return folder


def check_writable(folder: str | os.PathLike[str], what: str = "folder") -> Path:
    """Create ``folder`` if needed and make sure files can be written there, so that work
    whose results would go there is refused before it starts, not after."""
    folder = make_folder(folder, what)
    try:
        handle, probe = tempfile.mkstemp(prefix=".dynroute-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise DynrouteError(f"cannot write in the {what} {folder}: {os_reason(exc)}") from None
    return folder


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


class _RecordingFile:
    """A binary file that remembers the first ``OSError`` of a write.

    Some writers (``torch.save``) report a failed write as their own error and drop the
    ``OSError``; this keeps it, so a full disk is still called a full disk.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def current_umask() -> int:
    """The process's file-creation mask (read without changing it, as far as POSIX allows:
    set and restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file and move it to ``path`` durably.

    On any failure the temporary file is removed and ``path`` is left as it was; a failed
    file operation (full disk, read-only folder, ...) is a ``DynrouteError`` naming ``path``.
    """
    path = Path(path)
    make_folder(path.parent)
    kept = os.path.lexists(path)
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as exc:
        raise cannot_write(path, exc, kept) from None
    recorder = None
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp's 0600 is not the user's choice
        with os.fdopen(handle, "wb") as f:
            recorder = _RecordingFile(f)
            write(recorder)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise cannot_write(path, exc, kept) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        if recorder is not None and recorder.error is not None:
            raise cannot_write(path, recorder.error, kept) from None
        raise
    fsync_folder(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def json_text(data: Any, path: str | os.PathLike[str], indent: int | None = None) -> str:
    """``data`` as strict JSON (no ``NaN`` or ``Infinity``, which JSON does not have); a
    non-finite number is a ``DynrouteError`` naming ``path``, where it was to be written."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError as exc:
        raise DynrouteError(
            f"cannot write {path}: it would hold a number that is not finite ({exc}); "
            "nothing was written"
        ) from None


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 1) -> Path:
    """Strict JSON with a trailing newline, written atomically."""
    return write_text_atomic(path, json_text(data, path, indent) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` whole or not at all, durably.

    The line goes out in one ``os.write`` on an ``O_APPEND`` descriptor; a short or failed
    write (a full disk) is cut off again, so the file never ends in half a line. A file
    that already ends in half a line (a writer killed by an older version) gets a newline
    first, so the new line stays readable. Meant for files one process writes at a time
    (a run directory under its ``FolderLock``).
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise cannot_write(path, exc, os.path.lexists(path)) from None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # take back the part that was written
                os.ftruncate(fd, size)
            raise cannot_write(path, exc, True) from None
    finally:
        os.close(fd)


def read_json_object(path: str | os.PathLike[str], what: str, hint: str = "") -> dict[str, Any]:
    """A JSON file that must hold an object; any failure is a ``DynrouteError`` naming the
    file as ``what`` (e.g. "result file"), followed by ``hint`` (what to do about it)."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        data = json.loads(gate.read_json_bytes(path))
    except DynrouteError as exc:
        raise DynrouteError(f"{what} {path} is unreadable ({exc}){tail}") from None
    except ValueError as exc:
        raise DynrouteError(f"{what} {path} is unreadable or corrupt ({exc}){tail}") from None
    if not isinstance(data, dict):
        raise DynrouteError(f"{what} {path} does not hold a JSON object{tail}")
    return data


# ------------------------------------------------------------------ one writer per folder

#: The lock file a ``FolderLock`` holds in its folder.
LOCK_FILE = ".dynroute.lock"
#: folder (resolved) -> [descriptor, holds]: this process's locks, so that holding one twice
#: (a command, then the trainer it runs) is not a conflict with itself.
_HELD: dict[str, list[int]] = {}


class FolderLock:
    """An exclusive lock on ``folder`` for one process at a time: ``with FolderLock(...):``.

    ``flock`` on a lock file in the folder: the kernel drops it when the process ends,
    however it ends, so a crashed or killed writer never leaves the folder locked. A second
    process is refused at once with a ``DynrouteError`` that names the folder and the holder
    (its process id and what it is doing). Re-entrant within one process.
    """

    def __init__(self, folder: str | os.PathLike[str], what: str, doing: str = "") -> None:
        self.folder = Path(folder)
        self.what = what  # "run directory", "sweep state folder"
        self.doing = doing  # written into the lock file: "training", "sweep smoke"
        self._key = ""

    def acquire(self) -> FolderLock:
        make_folder(self.folder, self.what)
        self._key = str(self.folder.resolve())
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            return self
        if fcntl is None:  # pragma: no cover - no flock: nothing to hold
            _HELD[self._key] = [-1, 1]
            return self
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DynrouteError(
                f"cannot lock the {self.what} {self.folder}: {os_reason(exc)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DynrouteError(
                    f"cannot lock the {self.what} {self.folder}: {os_reason(exc)}"
                ) from None
            raise DynrouteError(
                f"the {self.what} {self.folder} is in use by another dynroute process"
                f"{self._holder(path)}; wait for it to finish or stop it (one writer per folder)"
            ) from None
        try:  # who holds it, for the message a second process gets
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.doing}\n".encode())
        except OSError:
            pass  # a full disk must not stop the lock itself
        _HELD[self._key] = [fd, 1]
        return self

    @staticmethod
    def _holder(path: Path) -> str:
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:
            return ""
        pid, _, doing = text.partition(" ")
        if not pid.isdigit():
            return ""
        return f" (process {pid}{', ' + doing if doing else ''})"

    def release(self) -> None:
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self._key]
        if held[0] >= 0:
            os.close(held[0])  # closing drops the flock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
