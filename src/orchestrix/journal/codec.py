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

from collections.abc import Callable
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


def decode(flat: list[Any]) -> list[tuple[Any, ...]]:
    """The events of a flat batch, as ``(kind, *arguments)`` for the journal writer.

    Index-based, with lists cut by slicing and ``list.index`` (C loops): the writer decodes
    every task's events, and a generator per record cost more than writing the rows."""
    events: list[tuple[Any, ...]] = []
    add = events.append
    at, size = 0, len(flat)
    while at < size:
        tag = flat[at]
        if tag == "R":
            at = _decode_recorded(flat, at, add)
        elif tag == "S":
            end = flat.index(None, at + 3)
            add(("started", flat[at + 3 : end], flat[at + 1], flat[at + 2]))
            at = end + 1
        elif tag == "G":
            end = flat.index(None, at + 2)
            add(("registered", _pairs(flat[at + 2 : end]), flat[at + 1]))
            at = end + 1
        elif tag == "F":
            key, name, worker, text = flat[at + 1 : at + 5]
            failure = {"key": key, "name": name, "worker": worker, "traceback": text}
            add(("failed", {**failure, "error": None}))
            at += 5
        elif tag in ("T", "K"):
            end = flat.index(None, at + 1)
            add(("retried" if tag == "T" else "stopped", flat[at + 1 : end]))
            at = end + 1
        elif tag == "L":
            end = flat.index(None, at + 1)
            add(("loaded", _pairs(flat[at + 1 : end])))
            at = end + 1
        else:
            raise ValueError(f"journal: unknown event tag {tag!r} at {at}")
    return events


def _decode_recorded(flat: list[Any], at: int, add: Callable[[Any], None]) -> int:
    worker, peak_rss_mb, count = flat[at + 1 : at + 4]
    at += 4
    entries = []
    for _ in range(count):
        started, ok, n_keys = flat[at : at + 3]
        at += 3
        keys = flat[at : at + n_keys]
        at += n_keys
        n_walls = flat[at]
        walls = flat[at + 1 : at + 1 + n_walls]
        at += 1 + n_walls
        entries.append((keys, started, walls, ok))
    add(("recorded", worker, peak_rss_mb, entries))
    return at


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    pairs = iter(items)
    return list(zip(pairs, pairs, strict=True))
