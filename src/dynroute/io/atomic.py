"""Atomic, durable file writes: the one way dynroute writes a file someone relies on.

A file is written to a temporary sibling, flushed and fsynced, renamed over the
target, and then the folder is fsynced so that the rename itself survives a power
cut. A reader therefore sees the old file or the new one, never half of one; a
killed writer leaves at most a hidden ``.*.tmp`` file, which is removed if the
writer fails or is stopped normally. ``AtomicFile`` does this for a file written as
it goes (``predict``'s rows, a download); ``write_atomic`` for one written at once. A
write that fails (a full disk, a read-only or unwritable folder) is a ``DynrouteError``
naming the path and the reason (``dynroute.io.gate.os_reason``, the one wording of a
failed file operation), and the previous version of the file is left as it was.

Only regular files are written: a target that is a device (``/dev/null``), a FIFO, a
socket, a folder or a link is refused, never replaced by a file (a rename would replace
the device node itself, or the link rather than what it points to).

Lines appended to a log (``append_line``) are written whole or not at all, and a
``FolderLock`` keeps a folder to one writing process at a time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from dynroute.core.errors import DynrouteError, signals_deferred
from dynroute.io import gate
from dynroute.io.gate import os_reason

try:  # POSIX; elsewhere a folder lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


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


def current_umask() -> int:
    """The process's file-creation mask (read without changing it, as far as POSIX allows:
    set and restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_target(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists; a ``DynrouteError`` if it is anything but a regular file
    (a device, FIFO, socket, folder or link), which a write must never replace."""
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise cannot_write(path, exc) from None
    if stat.S_ISLNK(status.st_mode):
        try:
            target = os.readlink(path)
        except OSError:  # pragma: no cover - removed since
            target = "?"
        raise DynrouteError(
            f"cannot write {path}: it is a link (to {target}); a link is never written "
            "through or replaced: name a regular file"
        )
    if not stat.S_ISREG(status.st_mode):
        raise DynrouteError(
            f"cannot write {path}: it is {gate.file_kind(status.st_mode)}, not a regular file; "
            "it is never replaced"
        )
    return True


class AtomicFile:
    """A file written as it goes and put in place whole: ``with AtomicFile(path) as f:
    f.write(data)``.

    Bytes go to a hidden temporary sibling (the user's umask, not ``mkstemp``'s 0600); at
    the end of the block it is flushed, fsynced and renamed over ``path`` (checked again to
    be a regular file or nothing), and the folder fsynced. If the block fails or is stopped
    (Ctrl-C, SIGTERM) the temporary file is removed, whatever state its buffer is in, and
    ``path`` keeps its previous version. A failed write is a ``DynrouteError`` naming
    ``path`` and the reason, even where a writer (``torch.save``) wraps the ``OSError`` in an
    error of its own: the first one is remembered.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.error: OSError | None = None
        self.kept = False
        self._file: IO[bytes] | None = None
        self._temporary: Path | None = None

    def __enter__(self) -> AtomicFile:
        self.kept = check_target(self.path)
        make_folder(self.path.parent)
        try:
            handle, name = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
        except OSError as exc:
            raise cannot_write(self.path, exc, self.kept) from None
        self._temporary = Path(name)
        try:
            os.fchmod(handle, 0o666 & ~current_umask())
            self._file = os.fdopen(handle, "wb")
        except OSError as exc:
            os.close(handle)
            self._discard()
            raise cannot_write(self.path, exc, self.kept) from None
        return self

    @property
    def temporary(self) -> Path:
        """Where the bytes are until the block ends (to check them first: a download)."""
        assert self._temporary is not None, "inside the with block"
        return self._temporary

    def write(self, data: Any) -> int:
        assert self._file is not None, "write inside the with block"
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        assert self._file is not None, "flush inside the with block"
        try:
            self._file.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno...: what writers ask
        if self._file is None:
            raise AttributeError(name)
        return getattr(self._file, name)

    def _discard(self) -> None:
        """Close and remove the temporary file, whatever fails on the way (a full disk
        refuses the buffer's last bytes on close: the file goes all the same)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._temporary is not None:
            with contextlib.suppress(OSError):
                self._temporary.unlink()
            self._temporary = None

    def _commit(self) -> None:
        assert self._file is not None and self._temporary is not None
        try:
            self.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            check_target(self.path)  # still nothing but a regular file, or nothing
            os.replace(self._temporary, self.path)
            self._temporary = None
        except OSError as exc:
            self._discard()
            raise cannot_write(self.path, self.error or exc, self.kept) from None
        except BaseException:
            self._discard()
            raise
        fsync_folder(self.path.parent)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self._commit()
            return
        self._discard()
        if self.error is not None and not issubclass(kind, KeyboardInterrupt):
            raise cannot_write(self.path, self.error, self.kept) from None


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary_file)`` on an ``AtomicFile`` and move it to ``path`` durably.

    On any failure the temporary file is removed and ``path`` is left as it was; a failed
    file operation (full disk, read-only folder, ...) is a ``DynrouteError`` naming ``path``.
    Ctrl-C or SIGTERM during the write is held until the file is in place (a checkpoint
    is a short write, and ``torch.save`` would turn the stop into an error of its own).
    """
    target = AtomicFile(path)
    with signals_deferred(), target as handle:
        try:
            write(handle)  # type: ignore[arg-type]
        except OSError as exc:
            target.error = target.error or exc
            raise
    return target.path


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
    except RecursionError:
        raise DynrouteError(f"{what} {path} is nested too deeply to be read{tail}") from None
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
