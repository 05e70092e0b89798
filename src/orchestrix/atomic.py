"""Writing a file whole or not at all, and saying so clearly when the disk is full.

A file is written under a temporary name in its directory and renamed into place: a reader (a
resumed run, the caller opening a dumped array) sees the whole file or none. Whatever stops the
write (a full disk, a value that cannot be pickled, Ctrl-C), the temporary file is removed. A
full disk (or quota) becomes a :class:`~orchestrix.DiskFullError` that names the directory, the
bytes the file needed and the bytes free, because "No space left on device" alone does not say
which of the run's directories (results, dump files, logs) to look at.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

from .errors import DiskFullError

__all__ = ["TEMPORARY_SUFFIX", "write_atomically"]

#: what follows the final name in a temporary file's name: ``.tmp-<pid>-<8 hex digits>``
TEMPORARY_SUFFIX = r"\.tmp-(\d+)-[0-9a-f]{8}$"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomically(path: str, write: Callable[[IO[bytes]], Any], what: str, hint: str) -> None:
    """Create ``path`` with ``write(stream)``; ``what`` names the file in an error (e.g. "the
    result of task 'f'"), ``hint`` says where else it could go (e.g. "set out_dir elsewhere")."""
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException as exc:
        _remove(temporary)
        if isinstance(exc, OSError):
            full = _disk_full(os.path.dirname(path), exc, write, what, hint)
            if full is not None:
                raise full from exc
        raise


def _disk_full(
    directory: str, exc: OSError, write: Callable[[IO[bytes]], Any], what: str, hint: str
) -> DiskFullError | None:
    """The error to raise if ``exc`` came of a full disk, else None. numpy's ``tofile`` reports
    a short write ("N requested and M written") without an errno: then the free space decides."""
    if exc.errno is not None and exc.errno not in _NO_SPACE:
        return None
    needed, free = _size_of(write), _free_bytes(directory)
    if exc.errno is None and (needed is None or free is None or free >= needed):
        return None
    needs = "" if needed is None else f": it needs {needed:,} bytes"
    has = "" if free is None else f", {free:,} are free"
    message = (
        f"no space left in {directory} to write {what}{needs}{has}; free space there or {hint}"
    )
    return DiskFullError(message, directory, needed, free)


class _Counter:
    """A stream that only counts what is written to it."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size

    def flush(self) -> None:
        pass


def _size_of(write: Callable[[IO[bytes]], Any]) -> int | None:
    """The size of the file ``write`` makes, by writing it again to nowhere (on the error path
    only: the size of a pickle is not known before it is made)."""
    counter = _Counter()
    try:
        write(counter)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - the size is a courtesy of the message, not its point
        return None
    return counter.count


def _free_bytes(directory: str) -> int | None:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # never created; or the directory is gone with it
