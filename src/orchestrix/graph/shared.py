"""A value sent once to each worker (:meth:`Orchestrator.scatter`), not with every task.

A :class:`Shared` handle can be passed anywhere in a task's arguments (nested in lists, tuples and
dicts too); the task receives the value itself. Where the value lives is the backend's business
(its ``share`` method): in the caller's process (sequential), in a dump file that each worker maps
(multiprocessing), in the workers' memory (dask). The handle travels to a worker as its id and
a small *source* (an object with a ``load()`` method) that finds the value there; each worker
process keeps the values it loaded most recently, so that the tasks of one worker load it once.

A handle is named in keys by its id, which is the value's token taken once, at scatter: cheap
to tokenize, and the same in every run of the same script (a resumed run finds the results).
Tasks share the value: like dask's scattered data, it is to be read, not changed in place.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from .tokenize import tokenize

__all__ = ["ShareOwner", "Shared", "check_owner", "running_owner", "shared_id"]

#: values loaded by this (worker) process, most recently used last
_LOADED: collections.OrderedDict[str, Any] = collections.OrderedDict()
_LOADED_MAX = 4
_LOCK = threading.Lock()
_RUNNING = threading.local()  # the owner whose tasks run in this thread, in the caller's process
_NO_VALUE: Any = object()


class ShareOwner:
    """What a backend's handles belong to: refused once closed, and by other backends."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Shared:
    """A value scattered to the workers: pass the handle in task arguments, tasks get the value.

    Make it with ``Orchestrator.scatter(value)``; it is good for that orchestrator's tasks,
    until it is closed."""

    __slots__ = ("_value", "id", "local", "owner", "source")

    def __init__(
        self, ident: str, owner: ShareOwner | None, source: Any = None, value: Any = _NO_VALUE
    ) -> None:
        self.id, self.owner, self.source = ident, owner, source
        #: the value itself is held (in the caller's process, for backends that run tasks there)
        self.local = value is not _NO_VALUE
        self._value = value

    def get(self) -> Any:
        """The value, in the process of the task that reads it."""
        check_owner(self, getattr(_RUNNING, "owner", None))
        if self.local:
            return self._value
        with _LOCK:
            if self.id in _LOADED:
                _LOADED.move_to_end(self.id)
                return _LOADED[self.id]
        value = self.source.load()  # outside the lock: a load may take a while, or fetch
        with _LOCK:
            _LOADED[self.id] = value
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
        return value

    def rebind(self, other: Shared) -> None:
        """Take the place of ``other``, a handle of the same value scattered by another
        orchestrator: the graphs that hold this handle run there (a host application that
        replaces its orchestrator and retries the same tasks: CARS's reset)."""
        if other.id != self.id:
            raise ValueError(f"{other!r} is not a handle of the value of {self!r}")
        self.owner, self.source, self.local, self._value = (
            other.owner, other.source, other.local, other._value,
        )  # fmt: skip

    def __orchestrix_token__(self) -> str:
        return self.id

    def __reduce__(self) -> tuple[Any, ...]:
        # to a worker: the id and the source, never the value (nor the parent's owner)
        return (Shared, (self.id, None, self.source))

    def __repr__(self) -> str:
        return f"Shared({self.id})"


def shared_id(value: Any) -> str:
    """The id of a handle of ``value``: its token (hashed once here, never again in keys)."""
    return f"shared-{tokenize(value)}"


def check_owner(shared: Shared, owner: ShareOwner | None) -> None:
    """Refuse ``shared`` if sending it to (or running it with) ``owner``'s tasks is wrong: it
    belongs to another orchestrator, or to one that is closed. ``owner`` None: not checked."""
    if owner is None or shared.owner is None:
        return
    if shared.owner is not owner or owner.closed:
        why = "is closed" if shared.owner.closed else "is not the one that runs this task"
        raise ValueError(
            f"{shared!r} comes from Orchestrator.scatter of an orchestrator that {why}: "
            "scatter the value with the orchestrator that runs the task"
        )


class running_owner:
    """While open, handles resolved in this thread are checked against ``owner``."""

    def __init__(self, owner: ShareOwner) -> None:
        self.owner = owner

    def __enter__(self) -> None:
        self.previous = getattr(_RUNNING, "owner", None)
        _RUNNING.owner = self.owner

    def __exit__(self, *exc: Any) -> None:
        _RUNNING.owner = self.previous
