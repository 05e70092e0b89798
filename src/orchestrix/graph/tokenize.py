"""Deterministic tokens for task keys.

A task's key is its function's name plus a token of the function and its arguments. The token must
be the same in every process and run of the same script, whatever ``PYTHONHASHSEED`` (so that keys
can name results in logs, journals and resumed runs), and must change whenever something that can
change the task's result changes: an argument at any depth, or the function's code, parameters,
defaults or closure.

Values are fed into a hash as a canonical byte stream: a type tag, then the content. The walk uses
an explicit stack, not recursion, so that no depth of nesting is too deep and nothing is cut off.
Rules, and why:

- Containers and objects met again within one argument are written as a reference to their first
  occurrence (as pickle does): an argument that contains itself is encoded exactly, in one pass,
  and a structure shared many times is walked once. Aliasing is thus part of the key; a task can
  observe it.
- Dicts are encoded in insertion order: two dicts with the same items in another order can give
  another result (``list(d)``, ``json.dumps``, a DataFrame's columns). Insertion order does not
  depend on the hash seed. Sets have no such order: their items are sorted by their own digests.
- Objects with no rule of their own are walked through ``__reduce_ex__`` (what pickle would store),
  so that a set or dict inside them is encoded canonically too. One that cannot be reduced gets a
  unique token: its task is never shared or resumed, never wrong.
- An array of about 100 MB or more is written as the digest of its bytes, which is kept for the
  next call only while nothing can write them (:mod:`~orchestrix.graph.arraytokens` says why).
- A memory map is named by its file only while :func:`~orchestrix.graph.mapped.mapped_file`
  proves that the name still leads to the mapped, read-only bytes; otherwise by its bytes, like
  any array.
- A function is encoded by its name, code (bytecode, constants, names, parameters, flags),
  defaults and closure cells, not by the module globals it reads: module-level code is the
  program, and globals are read when the task runs, not when it is called. Pass a value that
  should be part of the key as an argument.
- Classes and functions are named by module and qualified name, except orchestrix's own that
  appear in keys (``Tile``, ``ArraySink``, the tile task): they carry a fixed name
  (:func:`stable_name`), so that moving them to another module does not change any key, and a
  resumed run still finds the results stored before the upgrade.
"""

from __future__ import annotations

import copyreg
import enum
import functools
import hashlib
import pathlib
import sys
import types
import uuid
import weakref
from collections.abc import Callable
from operator import is_
from typing import Any

from .arraytokens import LARGE_ARGUMENT_BYTES, dtype_text, feed_array

__all__ = ["LARGE_ARGUMENT_BYTES", "FunctionToken", "stable_name", "tokenize", "tokenize_sized"]

#: objects walked through ``__reduce_ex__`` in one call before giving up (a reduction that makes
#: new objects without end would otherwise never finish)
_MAX_REDUCTIONS = 1_000_000

_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
)

# code object id -> (weak reference, digest): code is immutable, and functions passed as
# arguments (map_tiles' func, reduce helpers) would otherwise be walked again at every call
_CODE_DIGESTS: dict[int, tuple[Any, bytes]] = {}


def tokenize(*args: Any, **kwargs: Any) -> str:
    """Return a 32-hex-digit token, equal for equal inputs in every process and run."""
    return tokenize_sized(*args, **kwargs)[0]


def tokenize_sized(*args: Any, **kwargs: Any) -> tuple[str, int]:
    """The token, and the size in bytes of the largest array or bytes object among the values."""
    walker = _Walker()
    walker.walk(args)
    if kwargs:
        walker.walk(kwargs)
    return walker.hexdigest(), walker.largest


class FunctionToken:
    """The token of a task's function, kept between calls and made again when the function has
    been rebound since: another code object, other defaults, or a closure cell that now holds
    another object (a ``nonlocal`` assignment). Objects mutated in place are not seen."""

    __slots__ = ("_bindings", "_func", "_token")

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func
        self._bindings: tuple[Any, ...] | None = None
        self._token = ""

    def __call__(self) -> str:
        bindings = _bindings(self._func)
        known = self._bindings
        if known is None or len(known) != len(bindings) or not all(map(is_, bindings, known)):
            self._token = tokenize(self._func)
            self._bindings = bindings
        return self._token


def _bindings(func: Any) -> tuple[Any, ...]:
    """The objects a function's behaviour hangs on besides its name, compared by identity."""
    if isinstance(func, types.FunctionType):
        cells = tuple(_cell_value(cell) for cell in func.__closure__ or ())
        return (func.__code__, func.__defaults__, func.__kwdefaults__, *cells)
    if isinstance(func, types.MethodType):
        return (func.__self__, *_bindings(func.__func__))
    if isinstance(func, functools.partial):
        return (func.func, func.args, func.keywords, *_bindings(func.func))
    return ()


class _Step:
    """A pending action on the walker's stack (the stack also holds plain values)."""

    __slots__ = ("action", "value")

    def __init__(self, action: Callable[[_Walker, Any], None], value: Any) -> None:
        self.action = action
        self.value = value


class _Walker:
    """Walks values with an explicit stack and writes their canonical encoding into a hash."""

    __slots__ = (
        "_floors",
        "_hashers",
        "_keep",
        "_reductions",
        "_scopes",
        "_stack",
        "_update",
        "largest",
    )

    def __init__(self) -> None:
        hasher = hashlib.md5(usedforsecurity=False)
        self._hashers = [hasher]  # the innermost one is being written: a set item, a code object
        self._update = hasher.update
        self._stack: list[Any] = []
        # id -> order of first occurrence, one scope per hasher; lookups stop at the floor (a
        # code object's digest is cached, so it must not refer to anything outside it)
        self._scopes: list[dict[int, int]] = [{}]
        self._floors = [0]
        self._keep: list[Any] = []  # keeps walked objects (temporaries too) alive: ids stay unique
        self._reductions = 0
        self.largest = 0  # bytes of the largest buffer walked (for the large-argument warning)

    def hexdigest(self) -> str:
        return self._hashers[0].hexdigest()

    def walk(self, obj: Any) -> None:
        stack = self._stack
        stack.append(obj)
        simple_types = _SIMPLE
        while stack:
            item = stack.pop()
            kind = type(item)
            simple = simple_types.get(kind)
            if simple is not None:
                simple(self, item)
            elif kind is _Step:
                item.action(self, item.value)
            elif self._first_time(item):
                self._expand(item, kind)

    def push(self, *items: Any) -> None:
        """Walk ``items`` next, in this order."""
        self._stack.extend(reversed(items))

    def tag(self, tag: bytes, text: str = "") -> None:
        data = text.encode("utf-8", "surrogatepass")
        self._update(b"%s:%d:%s;" % (tag, len(data), data))

    def _first_time(self, obj: Any) -> bool:
        """Record ``obj``; if it was met before, write a reference to it and return False."""
        ident = id(obj)
        scopes = self._scopes
        for level in range(len(scopes) - 1, self._floors[-1] - 1, -1):
            order = scopes[level].get(ident)
            if order is not None:
                self._update(b"ref:%d:%d;" % (len(scopes) - 1 - level, order))
                return False
        memo = scopes[-1]
        memo[ident] = len(memo)
        self._keep.append(obj)
        return True

    def _expand(self, obj: Any, kind: type) -> None:
        token_method = getattr(kind, "__orchestrix_token__", None)
        if token_method is not None:
            self.tag(b"custom", _qualified_name(kind))
            self.push(token_method(obj))
        elif getattr(kind, "__orchestrix_delayed__", False):
            self.tag(b"delayed", f"{obj.key}[{obj.index}]")
        elif kind is list or kind is tuple:
            self._update(b"%s:%d;" % (kind.__name__.encode(), len(obj)))
            self._stack.extend(reversed(obj))
        elif kind is dict:
            self._update(b"dict:%d;" % len(obj))
            self._stack.extend(reversed([part for item in obj.items() for part in item]))
        elif isinstance(obj, tuple) and hasattr(kind, "_fields"):  # a namedtuple
            self.tag(b"namedtuple", _qualified_name(kind))
            self.push(tuple(obj))
        elif isinstance(obj, (set, frozenset)):
            self.tag(b"set", _qualified_name(kind))
            self._feed_unordered(list(obj))
            if getattr(obj, "__dict__", None):
                self.push(vars(obj))
        elif "numpy" in sys.modules and _feed_numpy(self, obj, kind):
            pass
        else:
            _feed_object(self, obj)

    def _feed_unordered(self, items: list[Any]) -> None:
        # Each item gets its own digest; the sorted digests are written, so iteration order (which
        # depends on hashing) does not matter.
        digests: list[bytes] = []
        self._update(b"%d;" % len(items))
        self._stack.append(_Step(_write_sorted, digests))
        for item in items:
            self._stack.append(_Step(_end_part, digests))
            self._stack.append(item)
            self._stack.append(_Step(_begin_part, False))

    def feed_code(self, code: types.CodeType) -> None:
        cached = _CODE_DIGESTS.get(id(code))
        if cached is not None and cached[0]() is code:
            self._update(cached[1])
            return
        self._stack.append(_Step(_end_code, code))
        self.push(
            code.co_name,
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags,
            code.co_varnames,
            code.co_freevars,
            code.co_cellvars,
            code.co_names,
            code.co_code,
            getattr(code, "co_exceptiontable", b""),
            code.co_consts,
        )
        self._stack.append(_Step(_begin_part, True))

    def unique(self, obj: Any) -> None:
        # Nothing stable to hash: the value gets a unique token, so its task is never shared.
        self.tag(b"unique", _qualified_name(type(obj)))
        self._update(uuid.uuid4().bytes)

    def feed_reduced(self, obj: Any) -> None:
        self._reductions += 1
        if self._reductions > _MAX_REDUCTIONS:
            self.unique(obj)
            return
        try:
            # As pickle: a reducer registered with copyreg (re.Pattern's) before the method
            reducer = copyreg.dispatch_table.get(type(obj))
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception:  # noqa: BLE001 - whatever makes reducing fail, the value is unique
            self.unique(obj)
            return
        if isinstance(reduced, str):  # a global, pickled by name
            self.tag(b"global", f"{getattr(obj, '__module__', None)}.{reduced}")
            return
        parts = list(reduced) + [None] * (5 - len(reduced))
        for index in (3, 4):  # list items and dict items come as iterators
            if parts[index] is not None:
                parts[index] = list(parts[index])
        self.tag(b"reduce", _qualified_name(type(obj)))
        self.push(tuple(parts[:5]))


def _begin_part(walker: _Walker, isolated: bool) -> None:
    hasher = hashlib.md5(usedforsecurity=False)
    walker._hashers.append(hasher)
    walker._update = hasher.update
    walker._scopes.append({})
    walker._floors.append(len(walker._scopes) - 1 if isolated else walker._floors[-1])


def _finish_part(walker: _Walker) -> bytes:
    digest = walker._hashers.pop().digest()
    walker._update = walker._hashers[-1].update
    walker._scopes.pop()
    walker._floors.pop()
    return digest


def _end_part(walker: _Walker, digests: list[bytes]) -> None:
    digests.append(_finish_part(walker))


def _write_sorted(walker: _Walker, digests: list[bytes]) -> None:
    walker._update(b"".join(sorted(digests)))


def _end_code(walker: _Walker, code: types.CodeType) -> None:
    digest = b"code:" + _finish_part(walker)
    ident = id(code)
    _CODE_DIGESTS[ident] = (weakref.ref(code, functools.partial(_forget, ident)), digest)
    walker._update(digest)


def _forget(ident: int, _ref: Any) -> None:
    _CODE_DIGESTS.pop(ident, None)


def _feed_object(walker: _Walker, obj: Any) -> None:
    if isinstance(obj, types.FunctionType):
        walker.tag(b"function", _qualified_name(obj))
        cells = [_cell_value(cell) for cell in obj.__closure__ or ()]
        code = _Step(_Walker.feed_code, obj.__code__)  # a step: written in its turn, not now
        walker.push(code, obj.__defaults__, obj.__kwdefaults__, cells)
    elif isinstance(obj, types.MethodType):
        walker.tag(b"method")
        walker.push(obj.__self__, obj.__func__)
    elif isinstance(obj, _BUILTIN_CALLABLES):
        _feed_builtin(walker, obj)
    elif isinstance(obj, functools.partial):
        walker.tag(b"partial")
        walker.push(obj.func, obj.args, obj.keywords, getattr(obj, "__dict__", None) or None)
    elif isinstance(obj, type):
        walker.tag(b"type", _qualified_name(obj))
    elif isinstance(obj, types.CodeType):
        walker.feed_code(obj)
    elif isinstance(obj, enum.Enum):
        walker.tag(b"enum", f"{_qualified_name(type(obj))}.{obj.name}")
    elif isinstance(obj, pathlib.PurePath):
        walker.tag(b"path", f"{_qualified_name(type(obj))}:{obj}")
    elif isinstance(obj, types.ModuleType):
        walker.tag(b"module", obj.__name__)
    else:
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None and callable(obj):
            # A decorator's wrapper may reduce to its name only: the wrapped code matters too.
            walker.tag(b"wrapper")
            walker.push(wrapped)
        walker.feed_reduced(obj)


def _feed_builtin(walker: _Walker, obj: Any) -> None:
    walker.tag(b"builtin", _qualified_name(obj))
    owner = getattr(obj, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        walker.push(owner)  # a bound method of a builtin type: ``[].append``, ``(1).__add__``


def _feed_numpy(walker: _Walker, obj: Any, kind: type) -> bool:
    """Encode a numpy array, scalar or ufunc; False if ``obj`` is none of them."""
    numpy = sys.modules["numpy"]
    if kind is numpy.ndarray or kind is numpy.memmap:
        feed_array(walker, obj, numpy)
    elif isinstance(obj, numpy.generic):
        walker.tag(b"npscalar", dtype_text(obj.dtype))
        walker._update(obj.tobytes())
    elif isinstance(obj, numpy.ufunc):
        walker.tag(b"ufunc", _qualified_name(obj))
    else:
        return False  # other ndarray subclasses (masked arrays...) carry more: reduced
    return True


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _EMPTY_CELL


class _EmptyCell:
    __slots__ = ()

    def __orchestrix_token__(self) -> str:
        return "empty cell"


_EMPTY_CELL = _EmptyCell()


def stable_name(name: str) -> Callable[[Any], Any]:
    """Give a class or function a fixed name in keys, whatever module it lives in.

    ``name`` is an identity, not an import path: keys of stored results hold it, so it never
    changes (changing it changes every key that holds the object). Subclasses are not covered:
    the name is read from the object's own namespace."""

    def mark(obj: Any) -> Any:
        obj.__orchestrix_name__ = name
        return obj

    return mark


def _qualified_name(obj: Any) -> str:
    namespace = getattr(obj, "__dict__", None)
    if namespace is not None:
        fixed = namespace.get("__orchestrix_name__")
        if fixed is not None:
            return str(fixed)
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}"


def _feed_str(walker: _Walker, obj: Any) -> None:
    walker.tag(b"s", obj)


def _feed_bytes(walker: _Walker, obj: Any) -> None:
    walker.largest = max(walker.largest, len(obj))
    walker._update(b"b:%d:" % len(obj))
    walker._update(obj)


def _feed_number(walker: _Walker, obj: Any) -> None:
    text = obj.hex() if type(obj) is float else repr(obj)
    walker.tag(type(obj).__name__.encode(), text)


def _feed_constant(walker: _Walker, obj: Any) -> None:
    walker.tag(b"const", repr(obj))


def _feed_slice(walker: _Walker, obj: Any) -> None:
    walker.tag(b"slice")
    walker.push(obj.start, obj.stop, obj.step)


_SIMPLE: dict[type, Callable[[_Walker, Any], None]] = {
    str: _feed_str,
    bytes: _feed_bytes,
    bytearray: _feed_bytes,
    int: _feed_number,
    float: _feed_number,
    complex: _feed_number,
    bool: _feed_constant,
    type(None): _feed_constant,
    type(Ellipsis): _feed_constant,
    slice: _feed_slice,
    range: lambda walker, obj: walker.tag(b"range", repr(obj)),
}
