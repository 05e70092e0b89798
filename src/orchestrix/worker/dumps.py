"""Large buffers of results through dump files: pickle protocol 5, buffers out of band.

A worker's result is walked through its plain containers (tuples, lists, dicts: the engine
indexes them, a task with ``nout=2`` returns a tuple of two values). Each other value in it that
is not a plain scalar (a numpy array, an xarray Dataset, a pandas DataFrame, any object) is
pickled with a ``buffer_callback``: its contiguous buffers of at least ``DUMP_THRESHOLD`` bytes go
out of band, into one file per value (each buffer at an aligned offset); smaller ones stay in the
pickle. Such a value travels as a :class:`Dumped` handle: the in-band pickle and the file. A
value with no large buffer travels as its pickle, made once, and is unpickled as it was.

The parent owns each file through its handle, which deletes the file when it is collected.
Materialised for the caller, or pickled to a worker that reads it, a handle becomes the value
rebuilt by ``pickle.loads(inband, buffers=...)`` over a copy-on-write map of the file
(``mmap.ACCESS_COPY``): the arrays inside are writable in place, as in every other mode, and a
change stays in the memory of the process that made it, never in the file that others read. The
map stays valid after the file is deleted. A result either leaves the worker whole or leaves no
file behind: if a dump (a full disk) or the pickling of the rest fails, its files are removed.

numpy pickles object arrays (and arrays neither C- nor Fortran-contiguous) in band; a large
non-contiguous array is made contiguous first, so that it does not go through the pipe.
"""

from __future__ import annotations

import functools
import io
import itertools
import mmap
import os
import pickle
import sys
import uuid
import weakref
from collections.abc import Callable
from typing import IO, Any

from ..atomic import write_atomically
from ..graph.shared import Shared, ShareOwner, shared_id
from ..graph.tasks import map_nested

__all__ = [
    "DUMP_THRESHOLD",
    "DumpSource",
    "Dumped",
    "Dumper",
    "PickledSource",
    "materialize",
    "open_dump",
    "share_in_file",
    "write_dump",
]

#: buffers smaller than this stay in the pickle: a file costs more than copying a few kB
DUMP_THRESHOLD = 64 * 1024
#: where buffers start in a dump file: what numpy wants of its arrays' data, and a cache line
_ALIGN = 64
_PLAIN = (int, float, complex, str, bytes, bool, type(None))
_CONTAINERS = (list, tuple, dict)
#: offset and length of each out-of-band buffer in a dump file, in pickle order
Spans = tuple[tuple[int, int], ...]


class _LeafType(type):
    # map_nested replaces instances of a type: here, anything but containers and plain scalars
    def __instancecheck__(cls, obj: Any) -> bool:
        kind = type(obj)
        return kind not in _CONTAINERS and kind not in _PLAIN


class _Leaf(metaclass=_LeafType):
    pass


class Dumper:
    """Worker side: replace the values of a result that hold large buffers by dump files."""

    def __init__(self, directory: str, threshold: int = DUMP_THRESHOLD) -> None:
        self.directory = directory
        self.threshold = threshold
        self._names = itertools.count()

    def encode(self, value: Any, pickle_result: Callable[[Any], bytes]) -> bytes:
        """``value`` with its large buffers dumped, pickled by ``pickle_result``. If a dump or
        the pickling fails, the files dumped for ``value`` are removed before the error goes on:
        a result that never reaches the parent has no handle there to delete them."""
        written: list[str] = []
        try:
            if type(value) in _PLAIN:
                return pickle_result(value)
            return pickle_result(map_nested(value, _Leaf, functools.partial(self._leaf, written)))
        except BaseException:
            for path in written:
                _remove_quietly(path)
            raise

    def _leaf(self, written: list[str], value: Any) -> Any:
        numpy = sys.modules.get("numpy")
        if numpy is not None and _too_small(value, numpy, self.threshold):
            return value  # no file for it: pickled with the rest, and not pickled twice
        path = os.path.join(self.directory, f"{os.getpid()}-{next(self._names)}.buf")
        dumped = write_dump(path, value, self.threshold)
        if isinstance(dumped, bytes):
            return _Pickled(dumped)  # nothing large in it: pickled once, not again with the rest
        written.append(path)
        return _DumpedFile(path, *dumped)


def _too_small(value: Any, numpy: Any, threshold: int) -> bool:
    """Whether ``value`` is a numpy scalar or array with no buffer to dump (a common leaf of
    results: a list of them need not be pickled one by one)."""
    if isinstance(value, numpy.generic):
        return True
    kind = type(value)
    return kind is numpy.ndarray and (value.nbytes < threshold or value.dtype.hasobject)


class _Pickled:
    """A value of a result already pickled (in band): the parent unpickles it as it was."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.data,))


def write_dump(path: str, value: Any, threshold: int) -> tuple[bytes, Spans] | bytes:
    """Write the large buffers of ``value`` to ``path`` (atomically); return the in-band pickle
    and where the buffers are. If ``value`` has no buffer over ``threshold``: its pickle, and no
    file."""
    inband, large = _pickle_leaf(value, threshold)
    if not large:
        return inband
    spans, offset = [], 0
    for raw in large:
        offset = -(-offset // _ALIGN) * _ALIGN
        spans.append((offset, raw.nbytes))
        offset += raw.nbytes
    what = _describe(value, offset)
    hint = "set dump_dir to a directory with room (or dump_to_disk=False)"
    write_atomically(path, functools.partial(_write_buffers, large, spans), what, hint)
    return inband, tuple(spans)


def _describe(value: Any, size: int) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"a result {type(value).__name__} ({dtype}, shape {shape})"
    return f"a result {type(value).__name__} ({size:,} bytes of buffers)"


def _write_buffers(
    large: list[memoryview], spans: list[tuple[int, int]], stream: IO[bytes]
) -> None:
    position = 0
    for raw, (offset, length) in zip(large, spans, strict=True):
        if offset > position:
            stream.write(bytes(offset - position))
        stream.write(raw)
        position = offset + length


def _pickle_leaf(value: Any, threshold: int) -> tuple[bytes, list[memoryview]]:
    """The pickle of ``value`` and the buffers it left out of band (those over ``threshold``)."""
    large: list[memoryview] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < threshold:
            return True
        large.append(raw)
        return False

    try:
        stream = io.BytesIO()
        _LeafPickler(stream, protocol=5, buffer_callback=keep_in_band).dump(value)
        return stream.getvalue(), large
    except Exception:  # noqa: BLE001 - e.g. an instance of a class that came by value
        import cloudpickle  # type: ignore[import-untyped]

        large.clear()
        data: bytes = cloudpickle.dumps(value, protocol=5, buffer_callback=keep_in_band)
        return data, large


class _LeafPickler(pickle.Pickler):
    # numpy pickles an array that is neither C- nor Fortran-contiguous (a strided view) in band,
    # copied: copy it to a contiguous array here instead, whose buffer can go out of band.
    def reducer_override(self, obj: Any) -> Any:
        numpy = sys.modules.get("numpy")
        if numpy is None or type(obj) is not numpy.ndarray or obj.dtype.hasobject:
            return NotImplemented
        if obj.flags.c_contiguous or obj.flags.f_contiguous or obj.nbytes < DUMP_THRESHOLD:
            return NotImplemented
        return numpy.ascontiguousarray(obj).__reduce_ex__(5)


class _DumpedFile:
    """A dumped value on its way from a worker to the parent, where it becomes a handle."""

    __slots__ = ("inband", "path", "spans")

    def __init__(self, path: str, inband: bytes, spans: Spans) -> None:
        self.path, self.inband, self.spans = path, inband, spans

    def __reduce__(self) -> tuple[Any, ...]:
        return (Dumped, (self.path, self.inband, self.spans))


class Dumped:
    """Parent side: owns one dump file; the file is deleted when the handle is collected.

    Pickled to a worker, it becomes the value rebuilt over a copy-on-write map of the file, as it
    does for the caller (:meth:`open`)."""

    __slots__ = ("__weakref__", "inband", "path", "spans")

    def __init__(self, path: str, inband: bytes, spans: Spans) -> None:
        self.path, self.inband, self.spans = path, inband, spans
        weakref.finalize(self, _remove_quietly, path)

    def open(self) -> Any:
        return open_dump(self.path, self.inband, self.spans)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open_dump, (self.path, self.inband, self.spans))

    def __repr__(self) -> str:
        return f"Dumped({self.path!r})"


def open_dump(path: str, inband: bytes, spans: Spans) -> Any:
    """The value dumped to ``path``, over a copy-on-write map of it: writable, the file
    untouched."""
    with open(path, "rb") as stream:
        mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)  # the buffers keep the map alive, and it closes with the last
    return pickle.loads(inband, buffers=[view[offset : offset + n] for offset, n in spans])


class DumpSource:
    """Where a shared value (``Orchestrator.scatter``) lies: a dump file that each worker maps,
    copy-on-write, to rebuild the value; nothing of its large buffers goes through a pipe. The
    parent's (``owned``) deletes the file when collected; the dump directory goes at close."""

    __slots__ = ("__weakref__", "inband", "path", "spans")

    def __init__(self, path: str, inband: bytes, spans: Spans, owned: bool = False) -> None:
        self.path, self.inband, self.spans = path, inband, spans
        if owned:
            weakref.finalize(self, _remove_quietly, path)

    def load(self) -> Any:
        return open_dump(self.path, self.inband, self.spans)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DumpSource, (self.path, self.inband, self.spans))


class PickledSource:
    """A shared value with no large buffer, or with no dump directory: its pickle, made once."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        return pickle.loads(self.data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PickledSource, (self.data,))


def share_in_file(value: Any, directory: str | None, owner: ShareOwner) -> Shared:
    """A handle of ``value`` written once to ``directory``, that each worker maps and rebuilds
    once. Without a directory (``dump_to_disk=False``): pickled once, and sent with each batch
    of jobs that needs it (still rebuilt once per worker)."""
    ident = shared_id(value)
    if directory is None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return Shared(ident, owner, PickledSource(data))
    path = os.path.join(directory, f"{ident}-{uuid.uuid4().hex[:8]}.buf")
    dumped = write_dump(path, value, DUMP_THRESHOLD)
    if isinstance(dumped, bytes):  # nothing large in it: its pickle is small
        return Shared(ident, owner, PickledSource(dumped))
    return Shared(ident, owner, DumpSource(path, *dumped, owned=True))


def materialize(value: Any) -> Any:
    """Replace the dump handles in a result by the values they hold, for the caller."""
    if type(value) in _PLAIN:
        return value  # the common case of small results: nothing to walk
    return map_nested(value, Dumped, Dumped.open)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already removed with its directory
