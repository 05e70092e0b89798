"""Task events as a flat list of strings and numbers, between the caller and the journal writer.

Why flat: events wait in the caller up to a batch (0.25 s) before they are sent. Kept as tuples
and lists, tens of thousands of them per second made CPython's cyclic garbage collector walk the
caller's heap again and again (it counts container objects that stay alive): that cost more than
all the rest of the journal. Strings and floats are not containers, so the buffer of a batch is a
single list, appended to in place.

Layout, one record per event (``*`` repeats; lists of keys end with ``None``):

- ``"G" canary (key name)* None``: registered (``canary``: 0 or 1)
- ``"S" worker when key* None``: started
- ``"R" worker peak_rss_mb n (started ok n_keys key* n_walls wall*)*n``: recorded
- ``"F" key name worker error``: failed (``error``: the traceback, or the error's line)
- ``"T" key* None``: retried; ``"K" key* None``: stopped
- ``"L" (key name)* None``: loaded from a resumed run's results
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ENCODERS", "decode"]

Append = Callable[[Any], None]


def _registered(append: Append, event: tuple[Any, ...]) -> None:
    append("G")
    append(int(event[2]))
    for unit in event[1]:
        for node in unit.tasks:
            append(node.key)
            append(node.name)
    append(None)


def _started(append: Append, event: tuple[Any, ...]) -> None:
    append("S")
    append(event[2])
    append(event[3])
    for unit in event[1]:
        for node in unit.tasks:
            append(node.key)
    append(None)


def _recorded(append: Append, event: tuple[Any, ...]) -> None:
    append("R")
    append(event[1])
    append(event[2])
    entries = event[3]
    append(len(entries))
    for unit, started, walls, ok, _ in entries:
        append(started)
        append(ok)
        tasks = unit.tasks
        if len(tasks) == 1 and len(walls) == 1:  # the common case, kept short
            append(1)
            append(tasks[0].key)
            append(1)
            append(walls[0])
            continue
        append(len(tasks))
        for node in tasks:
            append(node.key)
        append(len(walls))
        for wall in walls:
            append(wall)


def _failed(append: Append, event: tuple[Any, ...]) -> None:
    failure = event[1]
    append("F")
    append(failure["key"])
    append(failure["name"])
    append(failure["worker"])
    append(failure["traceback"] or failure["error"])


def _retried(append: Append, event: tuple[Any, ...]) -> None:
    append("T")
    _append_keys(append, [event[1]])


def _stopped(append: Append, event: tuple[Any, ...]) -> None:
    append("K")
    _append_keys(append, event[1])


def _loaded(append: Append, event: tuple[Any, ...]) -> None:
    append("L")
    for key, name in event[1]:
        append(key)
        append(name)
    append(None)


def _append_keys(append: Append, units: Any) -> None:
    for unit in units:
        for node in unit.tasks:
            append(node.key)
    append(None)


#: encoder of each event kind (see :mod:`orchestrix.tracking`): ``encode(list.append, event)``
ENCODERS: dict[str, Callable[[Append, tuple[Any, ...]], None]] = {
    "registered": _registered,
    "started": _started,
    "recorded": _recorded,
    "failed": _failed,
    "retried": _retried,
    "stopped": _stopped,
    "loaded": _loaded,
}


def decode(flat: list[Any]) -> Iterator[tuple[Any, ...]]:
    """The events of a flat batch, as ``(kind, *arguments)`` for the journal writer."""
    items = iter(flat)
    for tag in items:
        if tag == "G":
            canary = next(items)
            yield ("registered", list(_pairs(items)), canary)
        elif tag == "S":
            worker, when = next(items), next(items)
            yield ("started", list(_until_none(items)), worker, when)
        elif tag == "R":
            yield ("recorded", next(items), next(items), _entries(items))
        elif tag == "F":
            keys = ("key", "name", "worker", "traceback")
            failure = {key: next(items) for key in keys}
            yield ("failed", {**failure, "error": None})
        elif tag in ("T", "K"):
            yield ("retried" if tag == "T" else "stopped", list(_until_none(items)))
        elif tag == "L":
            yield ("loaded", list(_pairs(items)))
        else:
            raise ValueError(f"journal: unknown event tag {tag!r}")


def _entries(items: Iterator[Any]) -> list[tuple[Any, ...]]:
    entries = []
    for _ in range(next(items)):
        started, ok = next(items), next(items)
        keys = [next(items) for _ in range(next(items))]
        walls = [next(items) for _ in range(next(items))]
        entries.append((keys, started, walls, ok))
    return entries


def _until_none(items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        if item is None:
            return
        yield item


def _pairs(items: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    for key in items:
        if key is None:
            return
        yield key, next(items)
