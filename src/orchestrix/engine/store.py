"""Results of final tasks kept in ``out_dir/results`` for resumed runs (``resume=True``).

One file per task key: a numpy array as ``<key>.npy``, anything else pickled as ``<key>.pkl``.
A file is written under a temporary name and renamed into place (:mod:`orchestrix.atomic`), so a
reader (a rerun after the caller was killed mid-write) sees either the whole result or none, and
a full disk leaves the results stored before as they were. Keys are stable across runs
and change with the task's code or arguments, so a stored result is the result of that call.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import sys
from typing import IO, Any

from ..atomic import TEMPORARY_SUFFIX, write_atomically
from ..errors import OrchestrixError

__all__ = ["RESULTS_DIR", "ResultStore"]

RESULTS_DIR = "results"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_TEMPORARY = re.compile(TEMPORARY_SUFFIX)
_MAX_NAME = 200  # well under the usual 255-byte limit, with room for the suffixes


class ResultStore:
    """Final results by task key, in ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Delete what writers that died mid-write left (their temporary files)."""
        for name in os.listdir(self.directory):
            match = _TEMPORARY.search(name)
            if match is not None and not _alive(int(match.group(1))):
                try:
                    os.remove(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def contains(self, key: str) -> bool:
        base = self._base(key)
        return os.path.exists(base + ".npy") or os.path.exists(base + ".pkl")

    def load(self, key: str) -> Any:
        base = self._base(key)
        try:
            if os.path.exists(base + ".npy"):
                import numpy

                return numpy.load(base + ".npy", allow_pickle=False)
            with open(base + ".pkl", "rb") as stream:
                return pickle.load(stream)
        except Exception as exc:  # say which file, and how to get past it
            raise OrchestrixError(
                f"cannot load the stored result of task {key!r} from {base}.npy|.pkl: "
                f"{type(exc).__name__}: {exc}; delete that file to compute it again"
            ) from exc

    def save(self, key: str, value: Any) -> str:
        """Store ``value`` atomically; return the file's path."""
        if _is_plain_array(value):
            path, write = self._base(key) + ".npy", functools.partial(_save_array, value)
        else:
            path, write = self._base(key) + ".pkl", functools.partial(_save_pickle, value)
        hint = "give out_dir on a file system with room (resume keeps results in out_dir/results)"
        write_atomically(path, write, f"the result of task {key!r}", hint)
        return path

    def _base(self, key: str) -> str:
        name = _UNSAFE.sub("_", key)
        if len(name) > _MAX_NAME:  # keep the end: the token that makes the key unique
            name = name[-_MAX_NAME:]
        return os.path.join(self.directory, name)


def _save_array(value: Any, stream: IO[bytes]) -> None:
    import numpy

    numpy.save(stream, value, allow_pickle=False)


def _save_pickle(value: Any, stream: IO[bytes]) -> None:
    pickle.dump(value, stream, protocol=pickle.HIGHEST_PROTOCOL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _is_plain_array(value: Any) -> bool:
    """A numpy array that .npy holds exactly (not a subclass such as a masked array, whose
    mask would be lost; not an array of Python objects)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False
    return type(value) in (numpy.ndarray, numpy.memmap) and not value.dtype.hasobject
