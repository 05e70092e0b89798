"""Tasks, delayed values and the task graph.

Calling a task builds a :class:`TaskNode` and returns :class:`Delayed` handles to its outputs;
nothing runs. :func:`build_graph` collects every node a set of targets needs, once per key, in a
topological order. This module is pure: it knows nothing of configuration or backends.
"""

from __future__ import annotations

import functools
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, overload

from ..errors import LargeArgumentWarning, OrchestratorInTaskError
from .shared import Shared
from .signature import SignatureCheck
from .tokenize import LARGE_ARGUMENT_BYTES, FunctionToken, tokenize_sized

__all__ = [
    "Delayed",
    "Graph",
    "Ref",
    "TaskFunction",
    "TaskNode",
    "build_graph",
    "function_name",
    "task",
]


@dataclass(frozen=True, slots=True)
class Ref:
    """Stands, inside a node's arguments, for the output of another node."""

    key: str
    index: int | None  # None: the whole output; i: item i of a multi-output task


class TaskNode:
    """One call of a task: the function, its arguments (Delayed replaced by Ref) and its deps."""

    __slots__ = ("args", "deps", "func", "has_refs", "key", "kwargs", "name", "nout")

    def __init__(
        self,
        func: Callable[..., Any],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        nout: int,
        token: str,
    ) -> None:
        self.func = func
        self.name = name
        self.nout = nout
        self.key = f"{name}-{token}"
        deps: dict[str, TaskNode] = {}
        self.args = _replace_delayed(args, deps)
        self.kwargs = _replace_delayed(kwargs, deps)
        self.deps: tuple[TaskNode, ...] = tuple(deps.values())  # unique, in argument order
        #: the arguments hold something to resolve in the worker: a Ref or a Shared handle
        self.has_refs = bool(deps) or contains_shared((args, kwargs))

    @classmethod
    def call(
        cls,
        func: Callable[..., Any],
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str,
    ) -> TaskNode:
        """A node for one plain call, whose arguments are known to hold no Delayed."""
        return _rebuild_node(func, name, args, kwargs, 1, key, contains_shared((args, kwargs)))

    def __repr__(self) -> str:
        return f"<TaskNode {self.key}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A node travels without its deps: they would drag the whole upstream graph along.
        state = (self.func, self.name, self.args, self.kwargs, self.nout, self.key, self.has_refs)
        return (_rebuild_node, state)


def _rebuild_node(
    func: Callable[..., Any],
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    nout: int,
    key: str,
    has_refs: bool,
) -> TaskNode:
    node = TaskNode.__new__(TaskNode)
    node.func, node.name, node.args, node.kwargs = func, name, args, kwargs
    node.nout, node.key, node.has_refs, node.deps = nout, key, has_refs, ()
    return node


class Delayed:
    """A handle to a task's output, to pass to other tasks or to ``Orchestrator.compute``."""

    __slots__ = ("_index", "_node")
    __orchestrix_delayed__ = True

    def __init__(self, node: TaskNode, index: int | None = None) -> None:
        self._node = node
        self._index = index

    @property
    def key(self) -> str:
        """The key of the task that produces this value (stable across runs)."""
        return self._node.key

    @property
    def index(self) -> int | None:
        """Which output of a multi-output task this is (None for a single-output task)."""
        return self._index

    @property
    def name(self) -> str:
        return self._node.name

    @property
    def node(self) -> TaskNode:
        return self._node

    def __repr__(self) -> str:
        suffix = "" if self._index is None else f", index={self._index}"
        return f"Delayed({self.key!r}{suffix})"

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"{self!r} is a single output; declare the task with @ox.task(nout=N) to unpack it"
        )

    def __bool__(self) -> bool:
        raise TypeError(f"the truth value of {self!r} is not known until it is computed")


class TaskFunction:
    """A function made into a task: calling it builds a graph node and returns Delayed output(s)."""

    def __init__(
        self, func: Callable[..., Any], nout: int = 1, name: str | None = None, pure: bool = True
    ) -> None:
        if not callable(func):
            raise TypeError(f"ox.task expects a callable, got {type(func).__name__}")
        if not isinstance(nout, int) or isinstance(nout, bool) or nout < 1:
            raise TypeError(f"nout must be an int >= 1, got {nout!r}")
        if isinstance(func, TaskFunction):
            func = func.func
        self.func: Callable[..., Any] = func
        self.nout = nout
        self.name = name or function_name(func)
        self.pure = pure
        # The function is hashed once, and again only when it has been rebound (see FunctionToken).
        self._func_token = FunctionToken(func)
        self.signature_check = SignatureCheck(func, self.name)  # read once: a call only binds
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.signature_check.check(args, kwargs)  # here, not in a worker hours later
        try:
            if self.pure:
                token, largest = tokenize_sized(self._func_token(), args, kwargs)
            else:  # a fresh token per call, so two calls are never merged into one node
                token, largest = uuid.uuid4().hex, _largest_buffer((args, kwargs))
        except OrchestratorInTaskError as exc:
            raise OrchestratorInTaskError(f"task {self.name!r}: {exc}") from None
        if largest >= LARGE_ARGUMENT_BYTES:
            warn_large(self.name, largest, stacklevel=2)  # the line that called the task
        node = TaskNode(self.func, self.name, args, kwargs, self.nout, token)
        if self.nout == 1:
            return Delayed(node)
        return tuple(Delayed(node, i) for i in range(self.nout))

    def __repr__(self) -> str:
        return f"<orchestrix task {self.name} nout={self.nout}>"

    def __orchestrix_token__(self) -> tuple[Any, ...]:
        # A task passed as an argument: what it would do, not its cached state
        return (self.func, self.nout, self.name, self.pure)


#: names of the tasks warned of a large argument: a loop of calls warns once, not per call
_WARNED_LARGE: set[str] = set()


def warn_large_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Warn of an argument of about 100 MB or more among a submitted call's (pickled to its
    worker at every call), once per task name; the warning points at the caller's caller."""
    largest = _largest_buffer((args, kwargs))
    if largest >= LARGE_ARGUMENT_BYTES:
        warn_large(name, largest, stacklevel=3)


def warn_large(name: str, size: int, stacklevel: int) -> None:
    """Warn that task ``name`` was given an argument of ``size`` bytes, unless warned before
    (``stacklevel`` counts from the caller of this function)."""
    if name in _WARNED_LARGE:
        return
    _WARNED_LARGE.add(name)
    warnings.warn(
        f"task {name!r} was called with an argument of {size / 1e6:,.0f} MB: such an argument "
        "is pickled to the worker of every call (in the worker modes) and, given to a task, "
        "hashed for its key at every call (a read-only array only once); pass the path of a "
        ".npy file and open it in the task (np.load(path, mmap_mode='r') reads only what the "
        "task touches), pass a read-only memory map (named by its file, not hashed), or use "
        "Orchestrator.map_tiles (each task reads only its window)",
        LargeArgumentWarning,
        stacklevel=stacklevel + 1,
    )


def _largest_buffer(values: Any) -> int:
    """Bytes of the largest array or bytes object in ``values`` (arguments not tokenized, which
    would measure them, and the items of the lists, tuples and dicts among them)."""
    largest, level = 0, [values]
    for _ in range(4):  # values, (args, kwargs), each argument, the items of one
        inner: list[Any] = []
        for value in level:
            if type(value) in (list, tuple):
                inner.extend(value)
            elif type(value) is dict:
                inner.extend(value.values())
            elif isinstance(value, (bytes, bytearray)):
                largest = max(largest, len(value))
            else:
                largest = max(largest, _array_bytes(value))
        level = inner
    return largest


def _array_bytes(value: Any) -> int:
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(value, numpy.ndarray) or isinstance(value, numpy.memmap):
        return 0
    return int(value.nbytes)


@overload
def task(func: Callable[..., Any], /) -> TaskFunction: ...
@overload
def task(
    *, nout: int = 1, name: str | None = None, pure: bool = True
) -> Callable[[Callable[..., Any]], TaskFunction]: ...
def task(
    func: Callable[..., Any] | None = None,
    /,
    *,
    nout: int = 1,
    name: str | None = None,
    pure: bool = True,
) -> Any:
    """Make ``func`` a task: ``@ox.task``, ``@ox.task(nout=2)`` or ``ox.task(np.add)``.

    ``nout`` is the number of outputs (the function then returns a tuple of that length); ``name``
    replaces the function's qualified name in keys, logs and errors; ``pure=False`` gives every
    call its own key (use it for functions whose result is not determined by their arguments).
    """
    if func is not None:
        return TaskFunction(func, nout=nout, name=name, pure=pure)
    return lambda f: TaskFunction(f, nout=nout, name=name, pure=pure)


@dataclass
class Graph:
    """The nodes that some targets need, keyed by node key, in topological order."""

    nodes: dict[str, TaskNode]

    def __len__(self) -> int:
        return len(self.nodes)


def build_graph(targets: Iterable[Delayed]) -> Graph:
    """Collect the nodes needed by ``targets``, dependencies first, each key once.

    Iterative depth-first search, so that a chain of 100,000 tasks does not hit Python's recursion
    limit; the order is deterministic (arguments left to right).
    """
    order: dict[str, TaskNode] = {}
    for target in targets:
        root = target.node
        if root.key in order:
            continue
        stack: list[tuple[TaskNode, Iterator[TaskNode]]] = [(root, iter(root.deps))]
        visiting = {root.key}
        while stack:
            node, pending = stack[-1]
            for dep in pending:
                if dep.key not in order and dep.key not in visiting:
                    visiting.add(dep.key)
                    stack.append((dep, iter(dep.deps)))
                    break
            else:
                stack.pop()
                order[node.key] = node
    return Graph(order)


def find_delayed(obj: Any) -> list[Delayed]:
    """The Delayed objects inside ``obj`` (itself, or nested in lists, tuples and dicts)."""
    found: list[Delayed] = []

    def collect(leaf: Delayed) -> Delayed:
        found.append(leaf)
        return leaf

    map_nested(obj, Delayed, collect)
    return found


def contains_delayed(obj: Any) -> bool:
    """Whether ``obj`` is, or holds in lists, tuples and dicts, a Delayed (a fast check)."""
    return _contains(obj, Delayed)


def contains_shared(obj: Any) -> bool:
    """Whether ``obj`` is, or holds in lists, tuples and dicts, a Shared handle."""
    return _contains(obj, Shared)


def _contains(obj: Any, leaf_type: type) -> bool:
    stack = [obj]
    seen: set[int] = set()  # containers looked into: a container that holds itself ends
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is leaf_type:
            return True
        if (kind is tuple or kind is list or kind is dict) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if kind is dict else item)
    return False


_CONTAINERS = (list, tuple, dict)


def map_nested(obj: Any, leaf_type: type | tuple[type, ...], replace: Callable[[Any], Any]) -> Any:
    """Copy ``obj`` with each ``leaf_type`` instance replaced by ``replace(leaf)``.

    Only exact lists, tuples and dicts are searched (as dask does); other containers are opaque.
    Leaves are visited depth first, left to right. A container with nothing replaced is returned
    as it is, not copied. The walk uses an explicit stack: no depth of nesting is too deep. A
    container that holds itself is kept as it is, unless a leaf inside its cycle needs replacing
    (a copy could not keep the cycle): then ValueError.
    """
    if isinstance(obj, leaf_type):
        return replace(obj)
    if type(obj) not in _CONTAINERS:
        return obj
    for item in obj.values() if type(obj) is dict else obj:
        if type(item) in _CONTAINERS or isinstance(item, leaf_type):
            break
    else:
        return obj  # the common case, a few plain arguments: nothing to walk
    on_path = {id(obj)}
    cyclic: set[int] = set()  # containers met again below themselves
    frames: list[tuple[Any, list[Any], list[Any]]] = [(obj, _items_of(obj), [])]
    while True:
        container, items, done = frames[-1]
        if len(done) < len(items):
            item = items[len(done)]
            if isinstance(item, leaf_type):
                done.append(replace(item))
            elif type(item) not in _CONTAINERS:
                done.append(item)
            elif id(item) in on_path:
                cyclic.add(id(item))
                done.append(item)
            else:
                on_path.add(id(item))
                frames.append((item, _items_of(item), []))
            continue
        frames.pop()
        on_path.discard(id(container))
        new = _rebuilt(container, items, done)
        if new is not container and id(container) in cyclic:
            leaf = getattr(leaf_type, "__name__", "value")
            raise ValueError(
                f"a {type(container).__name__} that contains itself holds a "
                f"{leaf} to replace: the copy could not keep the cycle; break the "
                f"cycle, or pass the {leaf} as a separate argument"
            )
        if not frames:
            return new
        frames[-1][2].append(new)


def _items_of(container: Any) -> list[Any]:
    return list(container.values()) if type(container) is dict else list(container)


def _rebuilt(container: Any, items: list[Any], done: list[Any]) -> Any:
    """``container`` itself if no item changed, else a copy holding the new items."""
    if all(new is old for new, old in zip(done, items, strict=True)):
        return container
    kind = type(container)
    if kind is dict:
        return dict(zip(container, done, strict=True))
    return done if kind is list else tuple(done)


def _replace_delayed(obj: Any, deps: dict[str, TaskNode]) -> Any:
    """Copy ``obj`` with each Delayed replaced by a Ref, recording the nodes it refers to."""

    def to_ref(delayed: Delayed) -> Ref:
        deps.setdefault(delayed.key, delayed.node)
        return Ref(delayed.key, delayed.index)

    return map_nested(obj, Delayed, to_ref)


def function_name(func: Any) -> str:
    """The name tasks of ``func`` get by default (a partial is named by its function)."""
    if isinstance(func, functools.partial):
        return function_name(func.func)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name or type(func).__name__
