"""Moving work and results between processes: pickling, and the run's dump directory.

Work goes to workers pickled with cloudpickle, except that a task function defined at module level
goes by reference (module and name), not by value. Results come back with pickle protocol 5; their
large buffers (numpy arrays, also inside xarray and pandas objects) go through files of the run's
private dump directory (:mod:`~orchestrix.worker.dumps`).
"""

from __future__ import annotations

import collections
import io
import marshal
import os
import pickle
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Mapping
from typing import Any, ClassVar

import cloudpickle  # type: ignore[import-untyped]

from ..graph.shared import Shared, ShareOwner, check_owner
from ..graph.tasks import TaskFunction
from .dumps import DUMP_THRESHOLD, Dumped, Dumper, materialize

__all__ = [
    "DUMP_THRESHOLD",
    "Dumped",
    "Dumper",
    "create_dump_dir",
    "dumps_work",
    "materialize",
    "remove_stale_dump_dirs",
]

_DIR_PREFIX = "orchestrix-dump-"
_DIR_PATTERN = re.compile(rf"^{_DIR_PREFIX}(\d+)-(\d+)-")
_SHM = "/dev/shm"
_SHM_MIN_FREE = 2**30


def dumps_work(obj: Any, owner: ShareOwner | None = None) -> bytes:
    """Pickle work for a worker with the C pickler; only functions and classes that a worker
    could not import (lambdas, closures, anything of ``__main__``) go by value, via cloudpickle.
    Module-level task functions go by reference. Within one call each object is pickled once.
    Shared handles not of ``owner`` (another orchestrator's, or a closed one's) are refused."""
    buffer = io.BytesIO()
    pickler = _WorkPickler(buffer, protocol=5)
    pickler.owner = owner
    pickler.dump(obj)
    return buffer.getvalue()


class _WorkPickler(pickle.Pickler):
    owner: ShareOwner | None = None

    # The C pickler calls this only for objects that are not plain data (ints, strings, lists,
    # dicts...): cheap, unlike a pure-Python pickler.
    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is Shared:
            check_owner(obj, self.owner)
            return NotImplemented
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
