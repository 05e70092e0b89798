"""Deterministic tokens for task keys.

A task's key is its function's name plus a token of the function and its arguments. The token must
be the same in every run of the same script (so that keys can name results in logs, journals and
resumed runs) and must change when an argument or the function's code changes.

Values are fed into a hash as a canonical byte stream: a type tag, then the content. ``pickle`` is
only a last resort because its output depends on object identity (memoisation) and on set order.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import pickle
import sys
import types
import uuid
from typing import Any

_MAX_DEPTH = 64


def tokenize(*args: Any, **kwargs: Any) -> str:
    """Return a 32-hex-digit token, equal for equal inputs in every run."""
    hasher = hashlib.md5(usedforsecurity=False)
    feeder = _Feeder(hasher)
    feeder.feed(args)
    if kwargs:
        feeder.feed(kwargs)
    return hasher.hexdigest()


class _Feeder:
    """Walks a value and writes its canonical encoding into a hash."""

    def __init__(self, hasher: Any) -> None:
        self._update = hasher.update
        self._active: set[int] = set()  # ids being fed, to stop reference cycles

    def feed(self, obj: Any, depth: int = 0) -> None:
        if depth > _MAX_DEPTH or id(obj) in self._active:
            self._tag(b"cycle", type(obj).__qualname__)
            return
        simple = _SIMPLE.get(type(obj))
        if simple is not None:
            simple(self, obj)
            return
        self._active.add(id(obj))
        try:
            self._feed_compound(obj, depth + 1)
        finally:
            self._active.discard(id(obj))

    def _tag(self, tag: bytes, text: str = "") -> None:
        data = text.encode("utf-8", "surrogatepass")
        self._update(b"%s:%d:%s;" % (tag, len(data), data))

    def _feed_compound(self, obj: Any, depth: int) -> None:
        token_method = getattr(type(obj), "__orchestrix_token__", None)
        if token_method is not None:
            self._tag(b"custom", _qualified_name(type(obj)))
            self.feed(token_method(obj), depth)
        elif isinstance(obj, (list, tuple)):
            self._tag(b"seq", _qualified_name(type(obj)))
            self._update(b"%d;" % len(obj))
            for item in obj:
                self.feed(item, depth)
        elif isinstance(obj, dict):
            self._feed_unordered(b"dict", [(k, v) for k, v in obj.items()], depth)
        elif isinstance(obj, (set, frozenset)):
            self._feed_unordered(b"set", list(obj), depth)
        elif _is_numpy_array(obj):
            self._feed_ndarray(obj, depth)
        elif hasattr(obj, "__orchestrix_delayed__"):
            self._tag(b"delayed", f"{obj.key}[{obj.index}]")
        else:
            self._feed_object(obj, depth)

    def _feed_unordered(self, tag: bytes, items: list[Any], depth: int) -> None:
        # Sort by each item's own token so that the order of insertion or hashing does not matter.
        tokens = sorted(_token_of(item) for item in items)
        self._tag(tag, ",".join(tokens))

    def _feed_object(self, obj: Any, depth: int) -> None:
        if isinstance(obj, (types.FunctionType, types.MethodType)):
            self._feed_function(obj, depth)
        elif isinstance(obj, functools.partial):
            self._tag(b"partial")
            self.feed((obj.func, obj.args, obj.keywords), depth)
        elif isinstance(obj, type):
            self._tag(b"type", _qualified_name(obj))
        elif isinstance(obj, types.CodeType):
            self._feed_code(obj, depth)
        elif isinstance(obj, enum.Enum):
            self._tag(b"enum", f"{_qualified_name(type(obj))}.{obj.name}")
        elif dataclasses.is_dataclass(obj):
            self._tag(b"dataclass", _qualified_name(type(obj)))
            fields = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
            self.feed(fields, depth)
        elif isinstance(obj, os.PathLike):
            self._tag(b"path", os.fspath(obj))
        elif isinstance(obj, types.ModuleType):
            self._tag(b"module", obj.__name__)
        elif callable(obj) and hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
            self._tag(b"callable", _qualified_name(obj))  # builtins, ufuncs: named, stable
        else:
            self._feed_pickled(obj)

    def _feed_function(self, func: Any, depth: int) -> None:
        if isinstance(func, types.MethodType):
            self._tag(b"method")
            self.feed((func.__self__, func.__func__), depth)
            return
        self._tag(b"function", _qualified_name(func))
        self._feed_code(func.__code__, depth)
        self.feed(func.__defaults__, depth)
        self.feed(func.__kwdefaults__, depth)
        if func.__closure__:
            self.feed([_cell_value(cell) for cell in func.__closure__], depth)

    def _feed_code(self, code: types.CodeType, depth: int) -> None:
        self._tag(b"code", code.co_name)
        self._update(code.co_code)
        self.feed(code.co_names, depth)
        self.feed(code.co_consts, depth)

    def _feed_ndarray(self, array: Any, depth: int) -> None:
        self._tag(b"ndarray", f"{array.dtype.str}{array.shape}")
        filename = getattr(array, "filename", None)
        if filename and getattr(array, "offset", None) is not None:
            # A memory map is named by its file, not its bytes: hashing gigabytes would be slow.
            stat = os.stat(filename)
            self._tag(b"memmap", f"{filename}:{array.offset}:{stat.st_mtime_ns}:{stat.st_size}")
        elif array.dtype.hasobject:
            self.feed(array.tolist(), depth)
        else:
            numpy = sys.modules["numpy"]
            self._update(memoryview(numpy.ascontiguousarray(array)).cast("B"))

    def _feed_pickled(self, obj: Any) -> None:
        try:
            data = pickle.dumps(obj, protocol=4)
        except Exception:  # noqa: BLE001 - whatever makes pickling fail, fall back
            # Nothing stable to hash: the value gets a unique token, so its task is never shared.
            data = uuid.uuid4().bytes
        self._tag(b"pickle", _qualified_name(type(obj)))
        self._update(hashlib.md5(data, usedforsecurity=False).digest())


def _token_of(obj: Any) -> str:
    return tokenize(obj)


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _qualified_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


def _is_numpy_array(obj: Any) -> bool:
    numpy = sys.modules.get("numpy")  # never import numpy here: only arrays need it
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _feed_str(feeder: _Feeder, obj: Any) -> None:
    feeder._tag(b"s", obj)


def _feed_bytes(feeder: _Feeder, obj: Any) -> None:
    feeder._update(b"b:%d:" % len(obj))
    feeder._update(bytes(obj))


def _feed_number(feeder: _Feeder, obj: Any) -> None:
    text = obj.hex() if isinstance(obj, float) else repr(obj)
    feeder._tag(type(obj).__name__.encode(), text)


def _feed_constant(feeder: _Feeder, obj: Any) -> None:
    feeder._tag(b"const", repr(obj))


_SIMPLE = {
    str: _feed_str,
    bytes: _feed_bytes,
    bytearray: _feed_bytes,
    int: _feed_number,
    float: _feed_number,
    complex: _feed_number,
    bool: _feed_constant,
    type(None): _feed_constant,
    type(Ellipsis): _feed_constant,
    slice: lambda feeder, obj: feeder._tag(b"slice", repr(obj)),
    range: lambda feeder, obj: feeder._tag(b"range", repr(obj)),
}
