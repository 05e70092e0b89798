"""A task's inputs in one short line, for its error: ``load(i=3)``, ``smooth(<result of
load-ab12>, sigma=2.0)``, ``tile(array(float64, 256x256))``.

The line names what the task was called on (the tile, the file), so that a failure among a
million tasks says which one failed. It is built only for a failure (never on the hot path), in
the caller, from the node's own arguments: an upstream output is a :class:`~.tasks.Ref` there,
shown as the key of the task that makes it, never computed or fetched.

An argument can be anything, so nothing here trusts it: containers are walked to a bounded depth
and width, strings and bytes are cut before they are quoted, arrays are shown by dtype and shape
(their ``repr`` formats values), a dataclass or a named tuple by its fields, and any other object's
``repr`` is called inside ``try`` and cut; one that holds very many items is not asked at all.
Pure: the standard library only (numpy arrays are recognised by their ``shape`` and ``dtype``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .tasks import Delayed, Ref, TaskNode

__all__ = ["MAX_CHARS", "describe_call", "describe_node", "short_repr"]

#: the most characters of a whole call's line (a traceback's last line stays readable)
MAX_CHARS = 160
#: the most characters of one argument, and of a quoted string's content
MAX_ARG = 80
MAX_STRING = 56
#: bytes shown of a longer bytes object (a byte may take 4 characters: \x00)
MAX_BYTES = 12
#: items shown of a container, and levels of nesting walked
MAX_ITEMS = 4
MAX_DEPTH = 3
#: an object (not a builtin container) this long is shown by its type and length: asking its
#: ``repr`` may format every item
MAX_LEN_FOR_REPR = 1000
#: ints longer than this many bits are shown by their size (``repr`` of a huge int is quadratic,
#: and refused past 4300 digits)
MAX_INT_BITS = 256
ELLIPSIS = "..."

_SCALARS = (type(None), bool, float, complex)


def describe_node(node: TaskNode) -> str:
    """The call of ``node`` in one line of at most :data:`MAX_CHARS` characters. A function
    whose arguments say little by themselves (a map batch, a tile's task) describes its call
    itself, as its ``__orchestrix_inputs__(*args, **kwargs)``."""
    try:
        own = getattr(node.func, "__orchestrix_inputs__", None)
        if own is not None:
            return _cut(str(own(*node.args, **node.kwargs)), MAX_CHARS)
    except Exception:  # noqa: BLE001 - then as any other call
        pass
    return describe_call(node.func, node.name, node.args, node.kwargs)


def describe_call(
    func: Any, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None
) -> str:
    """``name(arg, key=value)``: the arguments named after ``func``'s parameters where its
    signature says them, cut to :data:`MAX_CHARS` characters."""
    kwargs = kwargs or {}
    try:
        parts = [f"{k}={_bounded(v)}" if k else _bounded(v) for k, v in _named(func, args, kwargs)]
    except Exception:  # noqa: BLE001 - a description must never be what fails
        parts = [ELLIPSIS]
    return _cut(f"{name}({', '.join(parts)})", MAX_CHARS, tail=")")


def short_repr(obj: Any, limit: int = MAX_ARG) -> str:
    """A ``repr`` of ``obj`` of at most ``limit`` characters, safe on any object."""
    try:
        return _cut(_repr(obj, MAX_DEPTH, set()), limit)
    except Exception:  # noqa: BLE001 - RecursionError, MemoryError of a hostile object...
        return _opaque(obj)


# -- naming the arguments -----------------------------------------------------------------------


def _named(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(parameter name or "", value)`` of each argument, in the order of the call."""
    parameters = _parameters(func)
    if parameters is None or len(args) > len(parameters):  # *args: as the call passed them
        parameters = ("",) * len(args)
    named = list(zip(parameters, args, strict=False))
    named.extend(kwargs.items())
    return named


def _parameters(func: Any) -> tuple[str, ...] | None:
    """The names positional arguments bind to ("" for a positional-only one), or None where the
    signature is not known (a builtin, a C function). Not cached: it is read for a failure
    only (~10 us), and a cache would keep functions alive, with what their closures hold."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    names = []
    for parameter in signature.parameters.values():
        if parameter.kind == parameter.POSITIONAL_OR_KEYWORD:
            names.append(parameter.name)
        elif parameter.kind == parameter.POSITIONAL_ONLY:
            names.append("")
        else:  # *args and what follows take no more positional arguments by name
            break
    return tuple(names)


# -- one value ----------------------------------------------------------------------------------


def _bounded(obj: Any) -> str:
    return short_repr(obj, MAX_ARG)


def _repr(obj: Any, depth: int, path: set[int]) -> str:
    kind = type(obj)
    if kind in _SCALARS:
        return repr(obj)
    if kind is int:
        bits = obj.bit_length()
        return repr(obj) if bits <= MAX_INT_BITS else f"<int of {bits:,} bits>"
    if kind is str:
        return _quoted(obj)
    if kind is bytes or kind is bytearray:
        return _binary(obj)
    if kind is Ref or kind is Delayed:
        return _upstream(obj.key, obj.index)
    if kind in _CONTAINERS:
        if id(obj) in path or depth <= 0:  # a cycle, or deep enough
            return "[...]" if kind is list else "(...)" if kind is tuple else "{...}"
        path.add(id(obj))
        try:
            return _CONTAINERS[kind](obj, depth - 1, path)
        finally:
            path.discard(id(obj))
    return _other(obj, depth, path)


def _quoted(text: str) -> str:
    if len(text) <= MAX_STRING:
        return repr(text)
    # more of the end than of the start: a path's file name, a message's last words
    head = MAX_STRING // 4
    cut = text[:head] + ELLIPSIS + text[head - MAX_STRING :]
    return f"{cut!r} ({len(text):,} chars)"


def _binary(data: bytes | bytearray) -> str:
    if len(data) <= MAX_STRING:
        whole = repr(data)
        if len(whole) <= MAX_STRING + 3:  # its quotes and its b
            return whole
    return f"{bytes(data[:MAX_BYTES])!r}{ELLIPSIS} ({len(data):,} bytes)"


def _upstream(key: str, index: int | None) -> str:
    return f"<result of {key}>" if index is None else f"<result {index} of {key}>"


def _items(values: list[str], total: int, opening: str, closing: str, single: str = "") -> str:
    shown = ", ".join(values)
    if total > len(values):
        shown += f", {ELLIPSIS} ({total:,} items)"
    return f"{opening}{shown}{single if total == 1 else ''}{closing}"


def _sequence(obj: Any, depth: int, path: set[int]) -> str:
    values = [_repr(item, depth, path) for item in _first(obj)]
    if type(obj) is list:
        return _items(values, len(obj), "[", "]")
    if type(obj) is tuple:
        return _items(values, len(obj), "(", ")", single=",")
    if not obj:
        return f"{type(obj).__name__}()"
    return _items(values, len(obj), "{", "}")


def _mapping(obj: dict[Any, Any], depth: int, path: set[int]) -> str:
    pairs = [f"{_repr(k, depth, path)}: {_repr(v, depth, path)}" for k, v in _first(obj.items())]
    return _items(pairs, len(obj), "{", "}")


def _first(items: Any) -> list[Any]:
    first: list[Any] = []
    for item in items:  # sets and dicts are not sliceable; stop after MAX_ITEMS
        if len(first) == MAX_ITEMS:
            break
        first.append(item)
    return first


_CONTAINERS: dict[type, Callable[[Any, int, set[int]], str]] = {
    list: _sequence,
    tuple: _sequence,
    set: _sequence,
    frozenset: _sequence,
    dict: _mapping,
}


def _other(obj: Any, depth: int, path: set[int]) -> str:
    """An object of any other type: an array by dtype and shape, a dataclass or a named tuple
    by its fields, else its own ``repr`` where it is likely short."""
    shape = _array_shape(obj)
    if shape is not None:
        return f"{_array_kind(obj)}({obj.dtype}, {shape})"
    fields = _fields(obj)
    if fields is not None:
        name = type(obj).__name__
        if depth <= 0 or id(obj) in path:
            return f"{name}({ELLIPSIS})"
        path.add(id(obj))
        try:
            values = [f"{field}={_repr(getattr(obj, field), depth - 1, path)}" for field in fields]
        finally:
            path.discard(id(obj))
        more = f", {ELLIPSIS}" if len(values) == MAX_ITEMS else ""
        return f"{name}({', '.join(values)}{more})"
    if type(obj).__repr__ is object.__repr__:  # an address says nothing: the type does
        return _opaque(obj)
    size = _length(obj)
    if size is not None and size > MAX_LEN_FOR_REPR:
        return f"<{type(obj).__name__} of {size:,} items>"
    try:
        return _cut(repr(obj), MAX_ARG)
    except Exception:  # noqa: BLE001 - one bad item leaves the rest of its container shown
        return _opaque(obj)


def _fields(obj: Any) -> list[str] | None:
    """The fields a dataclass or a named tuple shows (the first :data:`MAX_ITEMS`), else None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj) if f.repr][:MAX_ITEMS]
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
        return list(getattr(type(obj), "_fields")[:MAX_ITEMS])  # noqa: B009 - not on tuple
    return None


def _array_shape(obj: Any) -> str | None:
    """``256x256`` for an array-like (numpy, memmap, dask, torch), None for anything else."""
    try:
        shape, dtype = getattr(obj, "shape", None), getattr(obj, "dtype", None)
        if dtype is None or not isinstance(shape, tuple) or not shape:
            return None  # not an array; or a numpy scalar, whose repr is its value
        return "x".join(str(int(n)) for n in shape)
    except Exception:  # noqa: BLE001 - a lazy array's shape may fail to compute
        return None


def _array_kind(obj: Any) -> str:
    name = type(obj).__name__
    return "array" if name == "ndarray" else name


def _length(obj: Any) -> int | None:
    try:
        return len(obj)
    except Exception:  # noqa: BLE001 - no length, or a length that fails
        return None


def _opaque(obj: Any) -> str:
    return f"<{type(obj).__name__}>"


def _cut(text: str, limit: int, tail: str = "") -> str:
    """``text``, or its first characters and ``...`` (then ``tail``) to ``limit`` in all."""
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS) - len(tail)] + ELLIPSIS + tail
