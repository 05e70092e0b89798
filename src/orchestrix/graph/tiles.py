"""Tiles of an N-d array with overlapping margins, and where tile outputs go.

:func:`tiles` is pure geometry. :class:`ArraySink` is a ``.npy`` file that workers write their
tiles into directly, so that no output travels back to the caller. The task a tile runs as lives
here too (:func:`run_tile`): it reads only the tile's grown window, calls the user's function,
and keeps the tile's own part of the output.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .mapped import mapped_file
from .signature import SignatureCheck
from .tasks import Delayed, TaskFunction, function_name
from .tokenize import stable_name

__all__ = ["ArraySink", "Tile", "tiles"]


@stable_name("orchestrix.tiles.Tile")
@dataclass(frozen=True)
class Tile:
    """One tile: ``window`` is its own part of the array; ``grown`` is the window grown by the
    margin and clipped at the array's edges (what its task reads); ``inner`` is the tile's own
    part inside the grown window (slices relative to ``grown``)."""

    index: tuple[int, ...]
    window: tuple[slice, ...]
    grown: tuple[slice, ...]
    inner: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.window)

    @property
    def grown_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.grown)


def tiles(
    shape: Sequence[int], tile_shape: int | Sequence[int], margin: int | Sequence[int] = 0
) -> list[Tile]:
    """The tiles that cover ``shape`` (2-d at least), in C order. ``tile_shape`` and ``margin``
    are per axis, or one int for every axis; the last tile of an axis may be smaller."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise ValueError(f"tiles: shape must have 2 axes or more, each >= 1; got {shape}")
    sizes = _per_axis(tile_shape, len(shape), "tile_shape", minimum=1)
    margins = _per_axis(margin, len(shape), "margin", minimum=0)
    counts = [math.ceil(n / size) for n, size in zip(shape, sizes, strict=True)]
    found = []
    for index in itertools.product(*(range(count) for count in counts)):
        window, grown, inner = [], [], []
        for i, n, size, pad in zip(index, shape, sizes, margins, strict=True):
            start, stop = i * size, min((i + 1) * size, n)
            low, high = max(start - pad, 0), min(stop + pad, n)
            window.append(slice(start, stop))
            grown.append(slice(low, high))
            inner.append(slice(start - low, stop - low))
        found.append(Tile(index, tuple(window), tuple(grown), tuple(inner)))
    return found


@stable_name("orchestrix.tiles.ArraySink")
@dataclass(frozen=True)
class ArraySink:
    """A ``.npy`` file of ``shape`` and ``dtype`` that tile tasks write into, each its window.

    The file is created (filled with zeros) by :meth:`create`, which ``map_tiles`` calls; workers
    open it as a memory map and write their tiles in place. It must be on a file system that the
    workers see (any local path in the local modes; a shared one on a cluster)."""

    path: str
    shape: tuple[int, ...]
    dtype: Any

    def __init__(self, path: str | os.PathLike[str], shape: Sequence[int], dtype: Any) -> None:
        import numpy

        object.__setattr__(self, "path", os.path.abspath(os.fspath(path)))
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        object.__setattr__(self, "dtype", numpy.dtype(dtype).str)

    def create(self) -> None:
        """Create the file, unless one of this shape and dtype is there: its tiles are kept, so
        that a resumed run, which skips the tiles it finished, keeps what they wrote."""
        import numpy

        try:
            existing = numpy.load(self.path, mmap_mode="r")
            if existing.shape == self.shape and existing.dtype.str == self.dtype:
                return
        except (OSError, ValueError):
            pass  # missing or not a .npy file: made below
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        array = numpy.lib.format.open_memmap(self.path, "w+", self.dtype, self.shape)
        array.flush()
        del array

    def open(self, writable: bool = False) -> Any:
        """The file as a memory map (read-only unless ``writable``)."""
        import numpy

        return numpy.load(self.path, mmap_mode="r+" if writable else "r")


@stable_name("orchestrix.tiles.Source")
@dataclass(frozen=True)
class Source:
    """Where tile tasks read from: a ``.npy`` file or a raw memory-mapped file (by name, so that
    each task reads only its window), or an in-memory array's window handed to the task."""

    path: str
    stamp: str  # modification time and size: a changed file gives new task keys
    offset: int = -1  # -1: a .npy file; else a raw file, read with the fields below
    dtype: str = ""
    shape: tuple[int, ...] = ()
    order: str = "C"

    def read(self, window: tuple[slice, ...]) -> Any:
        import numpy

        if self.offset < 0:
            data = numpy.load(self.path, mmap_mode="r")
        else:
            order: Any = self.order
            data = numpy.memmap(self.path, self.dtype, "r", self.offset, self.shape, order)
        return numpy.array(data[window])  # a copy: the task's own memory, the file closed


def source_of(source: Any) -> tuple[Any, tuple[int, ...]]:
    """What tile tasks read (a :class:`Source`, or the array itself) and the array's shape."""
    import mmap

    import numpy

    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        header = numpy.load(path, mmap_mode="r")  # reads the header only
        return Source(path, _stamp(path)), tuple(header.shape)
    mapped = mapped_file(source) if isinstance(source, numpy.memmap) else None
    if mapped is not None and isinstance(source.base, mmap.mmap):
        # A whole read-only memory map (not a view of one) of a file still there: tasks map the
        # file themselves. A map whose file is gone (a result of compute, once its dump file is
        # removed) or that may differ from it (writable) is handed out by windows, like an array.
        order = "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
        raw = Source(
            mapped.path,
            _stamp(mapped.path),
            mapped.offset,
            source.dtype.str,
            tuple(source.shape),
            order,
        )
        return raw, tuple(source.shape)
    if isinstance(source, numpy.ndarray):
        return source, tuple(source.shape)
    raise TypeError(
        f"map_tiles: source must be a numpy array, a memory map or a .npy path, got "
        f"{type(source).__name__}"
    )


class TilePlan(NamedTuple):
    """The tasks of a ``map_tiles`` call: one per tile of ``grid``, in its order."""

    targets: list[Delayed]
    grid: list[Tile]
    sink: ArraySink | None  # where the tasks write, or None: they return their outputs
    shape: tuple[int, ...]  # the source's

    def place(self, out: Any, position: int, value: Any) -> Any:
        """Write the output of the task at ``position`` into ``out`` (made from the first output
        when None); returns ``out``."""
        tile = self.grid[position]
        if out is None:
            import numpy

            axes = len(tile.window)
            out = numpy.empty(self.shape[:axes] + tuple(value.shape[axes:]), value.dtype)
        out[tile.window] = value
        return out


def plan_tiles(
    func: Callable[[Any], Any],
    source: Any,
    tile_shape: int | Sequence[int],
    margin: int | Sequence[int],
    out: Any,
) -> TilePlan:
    """A task per tile of ``source`` calling ``func`` on its grown window (``map_tiles``).
    Creates ``out``'s file when it is an :class:`ArraySink`."""
    data, shape = source_of(source)
    grid = tiles(shape, tile_shape, margin)
    _check_takes_a_window(func)
    sink = out if isinstance(out, ArraySink) else None
    if out is not None:
        check_out(out, shape)  # before the sink's file is made and any task runs
    if sink is not None:
        sink.create()
    tile_task = TaskFunction(run_tile, name=f"{function_name(func)}[tile]")
    by_file = isinstance(data, Source)
    targets = [tile_task(func, data if by_file else data[t.grown], t, sink) for t in grid]
    return TilePlan(targets, grid, sink, shape)


def check_out(out: Any, shape: tuple[int, ...]) -> None:
    """Refuse an ``out`` (array or sink) that the tiles of a source of ``shape`` cannot fill.

    Its first axes must be the source's (trailing ones, such as bands, are the function's to
    choose). Its dtype cannot be checked against outputs not yet made; a sink's must be one that
    a ``.npy`` memory map can hold. (An output is cast to the sink's dtype as numpy assigns: a
    float into an int sink is truncated. :func:`run_tile` does not check it: its bytecode is in
    every tile key, and changing it would make resumed runs redo every tile.)"""
    import numpy

    what = "ArraySink" if isinstance(out, ArraySink) else "out array"
    out_shape = getattr(out, "shape", None)  # anything that takes slices may be written into
    if out_shape is not None and tuple(out_shape)[: len(shape)] != shape:
        raise ValueError(
            f"map_tiles: the {what}'s shape {tuple(out_shape)} does not fit the source: expected "
            f"{shape}, the source's (or that followed by trailing axes, such as bands)"
        )
    if not isinstance(out, ArraySink):
        return
    dtype = numpy.dtype(out.dtype)
    if dtype.hasobject or dtype.itemsize == 0:
        raise TypeError(
            f"map_tiles: the ArraySink's dtype {dtype} cannot be held in a .npy memory map: "
            "expected a fixed-size dtype without Python objects (numbers, booleans, fixed "
            "strings)"
        )


def _check_takes_a_window(func: Callable[[Any], Any]) -> None:
    try:
        SignatureCheck(func, function_name(func)).check((None,), {})
    except TypeError as exc:
        raise TypeError(
            f"map_tiles calls func with one argument, the tile's window: {exc}"
        ) from None


def _stamp(path: str) -> str:
    stat = os.stat(path)
    return f"{stat.st_mtime_ns}:{stat.st_size}"


@stable_name("orchestrix.tiles.run_tile")
def run_tile(func: Callable[[Any], Any], data: Any, tile: Tile, sink: ArraySink | None) -> Any:
    """A tile's task: ``data`` is the grown window (or a :class:`Source` to read it from); the
    output of ``func`` is cut to the tile's own part, then written to ``sink`` or returned."""
    if isinstance(data, Source):
        data = data.read(tile.grown)
    output = func(data)
    output = _own_part(output, tile, getattr(func, "__name__", "func"))
    if sink is None:
        return output
    target = sink.open(writable=True)
    target[tile.window] = output
    target.flush()
    del target
    return None


def _tile_inputs(func: Callable[[Any], Any], data: Any, tile: Tile, sink: Any) -> str:
    """A tile's task in one line (see graph.inputs): the tile, not its pixels."""
    window = ", ".join(f"{s.start}:{s.stop}" for s in tile.window)
    return f"{function_name(func)}(tile {tile.index} at [{window}])"


run_tile.__orchestrix_inputs__ = _tile_inputs


def _own_part(output: Any, tile: Tile, name: str) -> Any:
    """The tile's own part of ``output``: cut from a grown-window output, kept as it is if it
    has the tile's shape already (leading axes; trailing axes such as bands are free)."""
    axes = len(tile.window)
    shape = tuple(getattr(output, "shape", ()))[:axes]
    if shape == tile.grown_shape:
        return output[tile.inner]
    if shape == tile.shape:
        return output
    raise ValueError(
        f"map_tiles: {name} returned an output of shape {getattr(output, 'shape', None)} for "
        f"tile {tile.index}; expected the grown window's {tile.grown_shape} or the tile's "
        f"{tile.shape} on the first {axes} axes"
    )


def _per_axis(value: int | Sequence[int], axes: int, what: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * axes if isinstance(value, int) else tuple(value)
    if len(values) != axes or any(not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(
            f"tiles: {what} must be an int >= {minimum} or one per axis ({axes}); got {value!r}"
        )
    return values
