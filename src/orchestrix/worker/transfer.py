"""Moving work and results between processes: pickling, and numpy arrays through dump files.

Work goes to workers pickled with cloudpickle, except that a task function defined at module level
goes by reference (module and name), not by value. Results come back with pickle protocol 5, but
numpy arrays of at least ``DUMP_THRESHOLD`` bytes found in a result (also inside tuples, lists and
dicts) are written once by the worker to a file in the run's private dump directory and travel as
that file's path. The parent holds each file through a :class:`DumpedArray` handle: the file is
deleted when the last handle is gone (every consumer has finished with it); a consumer or the
caller reads it as a read-only memory map, which stays valid after the file is deleted. A
result either leaves the worker whole or leaves no file behind: if a dump (a full disk) or the
pickling of the rest fails, the files already dumped for it are removed.
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import marshal
import os
import pickle
import re
import shutil
import sys
import tempfile
import types
import weakref
from collections.abc import Callable, Mapping
from typing import IO, Any, ClassVar

import cloudpickle  # type: ignore[import-untyped]

from ..atomic import write_atomically
from ..graph.tasks import TaskFunction, map_nested

__all__ = [
    "DUMP_THRESHOLD",
    "DumpedArray",
    "Dumper",
    "create_dump_dir",
    "dumps_work",
    "materialize",
    "remove_stale_dump_dirs",
]

#: arrays smaller than this are pickled: a file costs more than copying a few kB
DUMP_THRESHOLD = 64 * 1024
_DIR_PREFIX = "orchestrix-dump-"
_DIR_PATTERN = re.compile(rf"^{_DIR_PREFIX}(\d+)-(\d+)-")
_SHM = "/dev/shm"
_SHM_MIN_FREE = 2**30


def dumps_work(obj: Any) -> bytes:
    """Pickle work for a worker with the C pickler; only functions and classes that a worker
    could not import (lambdas, closures, anything of ``__main__``) go by value, via cloudpickle.
    Module-level task functions go by reference. Within one call each object is pickled once."""
    buffer = io.BytesIO()
    _WorkPickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


class _WorkPickler(pickle.Pickler):
    # The C pickler calls this only for objects that are not plain data (ints, strings, lists,
    # dicts...): cheap, unlike a pure-Python pickler.
    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is not types.FunctionType and kind is not type:
            return NotImplemented
        found = _find_by_name(obj)
        if found is obj:
            return NotImplemented  # importable: pickle names it
        if isinstance(found, TaskFunction) and found.func is obj:
            # @ox.task put a TaskFunction under the function's name: name that, unwrap it there
            return (_load_task_function, (obj.__module__, obj.__qualname__))
        return (_load_by_value, (_dumps_by_value(obj),))


def _dumps_by_value(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _ValuePickler(buffer, protocol=5).dump(obj)
    return buffer.getvalue()


def _reduce_code(code: types.CodeType) -> Any:
    # marshal is what .pyc files hold: the whole code object, its file name and line table
    # included. Workers run the caller's Python, as cloudpickle's code by value requires anyway.
    try:
        return (marshal.loads, (marshal.dumps(code),))
    except ValueError:  # a code object built at run time with constants marshal refuses
        return cloudpickle.cloudpickle._code_reduce(code)


class _ValuePickler(cloudpickle.Pickler):
    """cloudpickle, except that code keeps its file name. cloudpickle 3 names it
    ``<dynamic-code>`` (for payloads that do not depend on where code was defined), so a worker's
    traceback of a function of the caller's script would show no file and no source line."""

    dispatch_table: ClassVar[Mapping[type, Any]] = collections.ChainMap(
        {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )


def _find_by_name(obj: Any) -> Any:
    """What another process finds under ``obj``'s module and qualified name (None: nothing).

    Workers never import the caller's ``__main__`` (see ``backends.pool.processes``), so its
    objects go by value."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _load_by_value(data: bytes) -> Any:
    return cloudpickle.loads(data)


def _load_task_function(module_name: str, qualname: str) -> Any:
    target: Any = __import__(module_name, fromlist=["_"])
    for part in qualname.split("."):
        target = getattr(target, part)
    return target.func


# -- dump files -------------------------------------------------------------------------------


class Dumper:
    """Worker side: replace large arrays in a result by files written in ``directory``."""

    def __init__(self, directory: str, threshold: int = DUMP_THRESHOLD) -> None:
        self.directory = directory
        self.threshold = threshold
        self._names = itertools.count()

    def encode(self, value: Any, pickle_result: Callable[[Any], bytes]) -> bytes:
        """``value`` with its large arrays dumped, pickled by ``pickle_result``. If a dump or
        the pickling fails, the files dumped for ``value`` are removed before the error goes on:
        a result that never reaches the parent has no handle there to delete them."""
        written: list[str] = []
        try:
            return pickle_result(self._dump(value, written))
        except BaseException:
            for path in written:
                _remove_quietly(path)
            raise

    def _dump(self, value: Any, written: list[str]) -> Any:
        numpy = sys.modules.get("numpy")
        if numpy is None:  # no array can exist in a process that never imported numpy
            return value
        return map_nested(value, numpy.ndarray, functools.partial(self._dump_array, written))

    def _dump_array(self, written: list[str], array: Any) -> Any:
        if array.nbytes < self.threshold or array.dtype.hasobject:
            return array
        path = os.path.join(self.directory, f"{os.getpid()}-{next(self._names)}.npy")
        what = f"a result array ({array.dtype}, shape {array.shape})"
        hint = "set dump_dir to a directory with room (or dump_to_disk=False)"
        write_atomically(path, functools.partial(_write_array, array), what, hint)
        written.append(path)
        return _DumpedFile(path)


def _write_array(array: Any, stream: IO[bytes]) -> None:
    sys.modules["numpy"].lib.format.write_array(stream, array, allow_pickle=False)


class _DumpedFile:
    """A dumped array on its way from a worker to the parent, where it becomes a handle."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (DumpedArray.adopt, (self.path,))


class DumpedArray:
    """Parent side: owns one dump file; the file is deleted when the handle is collected.

    Pickled to a worker, it becomes a copy-on-write memory map of the file, as it does for the
    caller (:meth:`open`): a task or the caller may change the array in place, as in every other
    mode, and the change stays in that process's memory, never in the file that others read.
    """

    __slots__ = ("__weakref__", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        weakref.finalize(self, _remove_quietly, path)

    @classmethod
    def adopt(cls, path: str) -> DumpedArray:
        return cls(path)

    def open(self) -> Any:
        return _open_dump(self.path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_open_dump, (self.path,))

    def __repr__(self) -> str:
        return f"DumpedArray({self.path!r})"


def _open_dump(path: str) -> Any:
    import numpy

    return numpy.load(path, mmap_mode="c")  # copy-on-write: writable, the file untouched


_PLAIN = (int, float, str, bytes, bool, type(None))


def materialize(value: Any) -> Any:
    """Replace the dump handles in a result by copy-on-write memory maps, for the caller."""
    if type(value) in _PLAIN:
        return value  # the common case of small results: nothing to walk
    return map_nested(value, DumpedArray, DumpedArray.open)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already removed with its directory


# -- the dump directory -----------------------------------------------------------------------


def create_dump_dir(dump_dir: str | None, out_dir: str | None, needed_bytes: int = 0) -> str:
    """Create the run's private dump directory (mode 0700) and return its path.

    ``dump_dir`` is where to put it; by default /dev/shm (memory, no disk I/O) when it has room,
    else ``out_dir``, else the temporary directory. Directories left there by killed runs go first.
    """
    base = dump_dir or _default_base(out_dir, needed_bytes)
    os.makedirs(base, exist_ok=True)
    remove_stale_dump_dirs(base)
    prefix = f"{_DIR_PREFIX}{os.getpid()}-{_process_start_ticks(os.getpid())}-"
    return tempfile.mkdtemp(prefix=prefix, dir=base)  # mkdtemp creates it with mode 0700


def _default_base(out_dir: str | None, needed_bytes: int) -> str:
    try:
        stats = os.statvfs(_SHM)
        if os.access(_SHM, os.W_OK) and stats.f_bavail * stats.f_frsize >= max(
            _SHM_MIN_FREE, needed_bytes
        ):
            return _SHM
    except OSError:
        pass
    return out_dir or tempfile.gettempdir()


def remove_stale_dump_dirs(base: str) -> list[str]:
    """Remove dump directories in ``base`` whose creating process no longer exists."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        match = _DIR_PATTERN.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        pid, ticks = int(match.group(1)), int(match.group(2))
        if not _process_alive(pid, ticks):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def _process_alive(pid: int, ticks: int) -> bool:
    """Is ``pid`` alive and the same process (same start time), not a reuse of its number?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_start_ticks(pid) == ticks


def _process_start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux), or 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0
