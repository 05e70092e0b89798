"""What ``compute`` and ``as_completed`` accept as targets, and what they refuse.

Both take the same structures: a :class:`Delayed`, or lists, tuples and dicts holding Delayed
objects and plain values, nested as deep as one likes (``as_completed`` takes the list, tuple or
dict at the top, and yields each of its items once all of that item is computed). What neither
can compute is refused with a :class:`TypeError` saying what to do, instead of being handed back
unchanged: a generator or another iterator (it would be used up), a set (it has no order to give
values back in), a dask collection, futures (their work is already under way elsewhere) and a
task function that was not called.

Pure: no backend, no process.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from .tasks import Delayed, TaskFunction, map_nested

__all__ = ["Completion", "check_targets"]

_CONTAINERS = (list, tuple, dict)


def check_targets(targets: Any, api: str) -> None:
    """Raise TypeError if ``targets`` is, or holds in lists, tuples and dicts, something that
    ``api`` (``"compute"``, ``"as_completed"``) cannot compute."""
    stack = [(targets, "")]
    seen: set[int] = set()  # containers looked into: one that holds itself ends the walk
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind is Delayed:
            continue
        if kind in _CONTAINERS:
            if id(item) not in seen:
                seen.add(id(item))
                pairs = item.items() if kind is dict else enumerate(item)
                stack.extend((value, f"{where}[{index!r}]") for index, value in pairs)
            continue
        why = _refusal(item)
        if why is not None:
            at = f" at {api}(targets){where}" if where else ""
            raise TypeError(f"{api} cannot compute {_what(item)}{at}: {why}")


def _refusal(item: Any) -> str | None:
    """What to do instead, for a value that compute cannot compute; None for a plain value."""
    if isinstance(item, TaskFunction):
        return f"call it to make a task (for example {item.name}(...)), then compute that"
    if isinstance(item, set | frozenset):
        return "a set has no order to give the values back in; pass a list (or a dict)"
    if isinstance(item, Iterator):
        return "it would be used up as it is read; pass a list, for example list(...)"
    if hasattr(item, "__dask_graph__"):
        return "compute it with dask (its .compute()), or make its work orchestrix tasks"
    if isinstance(item, Future) or _is_dask_future(item):
        return "its work is already under way; take its value with .result()"
    return None


def _is_dask_future(item: Any) -> bool:
    kind = type(item)
    return kind.__name__ == "Future" and kind.__module__.startswith("distributed")


def _what(item: Any) -> str:
    if isinstance(item, TaskFunction):
        return f"the task function {item.name!r} (not called)"
    kind = type(item)
    return f"a {kind.__name__}" if kind.__module__ == "builtins" else f"a {kind.__qualname__}"


class Completion:
    """The bookkeeping of one ``as_completed``: the Delayed leaves to run, and which item of
    ``targets`` each belongs to; an item is complete once all of its leaves are."""

    def __init__(self, targets: Any) -> None:  # a list, tuple or dict
        if type(targets) is dict:
            self.names: list[Any] = list(targets)
            items = list(targets.values())
        else:
            self.names = list(range(len(targets)))
            items = list(targets)
        self.items = items
        self.leaves: list[Delayed] = []
        self.owner: list[int] = []  # leaf position -> item position
        self.values: list[list[Any]] = []  # per item, its leaves' values in leaf order
        self.missing: list[int] = []  # per item, how many of its leaves are not done
        self._first: list[int] = []  # per item, the position of its first leaf
        for position, item in enumerate(items):
            found: list[Delayed] = []
            map_nested(item, Delayed, found.append)
            self._first.append(len(self.leaves))
            self.leaves.extend(found)
            self.owner.extend([position] * len(found))
            self.values.append([None] * len(found))
            self.missing.append(len(found))

    def complete_now(self) -> Iterator[tuple[Any, Any]]:
        """The items that hold no Delayed: they are complete before anything runs."""
        for position, missing in enumerate(self.missing):
            if not missing:
                yield self.names[position], self.items[position]

    def take(self, leaf: int, value: Any) -> tuple[Any, Any] | None:
        """Leaf number ``leaf`` is done with ``value``: the ``(name, value)`` of its item if
        that completes the item, else None."""
        position = self.owner[leaf]
        self.values[position][leaf - self._first[position]] = value
        self.missing[position] -= 1
        if self.missing[position]:
            return None
        values = iter(self.values[position])
        self.values[position] = []
        return self.names[position], map_nested(
            self.items[position], Delayed, lambda _: next(values)
        )
