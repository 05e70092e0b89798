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
- ``"F" key name worker error``: failed (``error``: the traceback, or the error's line),
  then, where the failed call is known, ``"I" inputs``: it in one line (a record of its own,
  so that a batch in the layout of earlier versions still decodes)
- ``"T" key* None``: retried; ``"K" key* None``: stopped
- ``"L" (key name)* None``: loaded from a resumed run's results

:data:`ENCODERS` flattens the caller's events (:mod:`orchestrix.records`);
:func:`decode` gives the writer's records below, which name tasks by key where the caller's
events hold units. The tags are :class:`Tag`'s values: one definition for both sides.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple

from ..records import (
    FailureRecord,
    Loaded,
    Recorded,
    Registered,
    Retried,
    Started,
    Stopped,
    UnitLabels,
)

__all__ = [
    "ENCODERS",
    "KeysRun",
    "Tag",
    "TasksRecorded",
    "TasksRegistered",
    "TasksRetried",
    "TasksStarted",
    "TasksStopped",
    "decode",
]

Append = Callable[[Any], None]


class Tag(str, enum.Enum):
    """The first item of an event's flat record: its kind, on the wire."""

    #: :class:`~orchestrix.records.Registered`
    REGISTERED = "G"
    #: :class:`~orchestrix.records.Started`
    STARTED = "S"
    #: :class:`~orchestrix.records.Recorded`
    RECORDED = "R"
    #: :class:`~orchestrix.records.FailureRecord`
    FAILED = "F"
    #: the inputs of the failure just before (:attr:`FailureRecord.inputs`)
    INPUTS = "I"
    #: :class:`~orchestrix.records.Retried`
    RETRIED = "T"
    #: :class:`~orchestrix.records.Stopped`
    STOPPED = "K"
    #: :class:`~orchestrix.records.Loaded`
    LOADED = "L"


# The buffer holds the plain strings (a str subclass would pickle as the enum, by name).
_G, _S, _R, _F = Tag.REGISTERED.value, Tag.STARTED.value, Tag.RECORDED.value, Tag.FAILED.value
_T, _K, _L = Tag.RETRIED.value, Tag.STOPPED.value, Tag.LOADED.value
_I = Tag.INPUTS.value


# -- what the writer reads (tasks named by key) --------------------------------------------------


class TasksRegistered(NamedTuple):
    """A :class:`Registered`: ``(key, name)`` of each task of the units."""

    tasks: list[tuple[str, str]]
    canary: int


class TasksStarted(NamedTuple):
    """A :class:`Started`: the keys of the tasks of the units."""

    keys: list[str]
    worker: str
    when: float


class KeysRun(NamedTuple):
    """A :class:`~orchestrix.records.UnitRun`: the keys of the unit's tasks."""

    keys: list[str]
    started: float
    walls: list[float]
    ok: bool


class TasksRecorded(NamedTuple):
    """A :class:`Recorded`."""

    worker: str
    peak_rss_mb: float | None
    runs: list[KeysRun]


class TasksRetried(NamedTuple):
    """A :class:`Retried`: the keys of the unit's tasks."""

    keys: list[str]


class TasksStopped(NamedTuple):
    """A :class:`Stopped`: the keys of the units' tasks."""

    keys: list[str]


#: what :func:`decode` gives (a failed event decodes to a FailureRecord whose ``traceback`` is
#: the text the journal keeps, and ``error`` None; a loaded one to a Loaded)
Decoded = (
    TasksRegistered | TasksStarted | TasksRecorded | FailureRecord | TasksRetried | TasksStopped
    | Loaded
)  # fmt: skip

# -- encoding (the caller) ----------------------------------------------------------------------


def _registered(append: Append, event: Registered) -> None:
    append(_G)
    append(int(event.canary))
    for unit in event.units:
        for node in unit.tasks:
            append(node.key)
            append(node.name)
    append(None)


def _started(append: Append, event: Started) -> None:
    append(_S)
    append(event.worker)
    append(event.when)
    for unit in event.units:
        for node in unit.tasks:
            append(node.key)
    append(None)


def _recorded(append: Append, event: Recorded) -> None:
    append(_R)
    append(event.worker)
    append(event.peak_rss_mb)
    runs = event.runs
    append(len(runs))
    for run in runs:
        append(run.started)
        append(run.ok)
        tasks, walls = run.unit.tasks, run.walls
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


def _failed(append: Append, event: FailureRecord) -> None:
    append(_F)
    append(event.key)
    append(event.name)
    append(event.worker)
    append(event.traceback or event.error)
    if event.inputs is not None:
        append(_I)
        append(event.inputs)


def _retried(append: Append, event: Retried) -> None:
    append(_T)
    _append_keys(append, [event.unit])


def _stopped(append: Append, event: Stopped) -> None:
    append(_K)
    _append_keys(append, event.units)


def _loaded(append: Append, event: Loaded) -> None:
    append(_L)
    for key, name in event.tasks:
        append(key)
        append(name)
    append(None)


def _append_keys(append: Append, units: Any) -> None:
    unit: UnitLabels
    for unit in units:
        for node in unit.tasks:
            append(node.key)
    append(None)


#: encoder of each event type: ``ENCODERS[type(event)](list.append, event)``
ENCODERS: dict[type, Callable[[Append, Any], None]] = {
    Registered: _registered,
    Started: _started,
    Recorded: _recorded,
    FailureRecord: _failed,
    Retried: _retried,
    Stopped: _stopped,
    Loaded: _loaded,
}

# -- decoding (the writer) ----------------------------------------------------------------------

_new = tuple.__new__  # a record per unit at half the cost of its class's __new__


def decode(flat: list[Any]) -> list[Decoded]:
    """The events of a flat batch, as the writer's records.

    Index-based, with lists cut by slicing and ``list.index`` (C loops): the writer decodes
    every task's events, and a generator per record cost more than writing the rows."""
    events: list[Decoded] = []
    add = events.append
    at, size = 0, len(flat)
    while at < size:
        tag = flat[at]
        if tag == _R:
            at = _decode_recorded(flat, at, add)
        elif tag == _S:
            end = flat.index(None, at + 3)
            add(_new(TasksStarted, (flat[at + 3 : end], flat[at + 1], flat[at + 2])))
            at = end + 1
        elif tag == _G:
            end = flat.index(None, at + 2)
            add(TasksRegistered(_pairs(flat[at + 2 : end]), flat[at + 1]))
            at = end + 1
        elif tag == _F:
            key, name, worker, text = flat[at + 1 : at + 5]
            at += 5
            inputs = None
            if at < size and flat[at] == _I:
                inputs = flat[at + 1]
                at += 2
            add(FailureRecord(key, name, worker, None, text, inputs))
        elif tag in (_T, _K):
            end = flat.index(None, at + 1)
            keys = flat[at + 1 : end]
            add(TasksRetried(keys) if tag == _T else TasksStopped(keys))
            at = end + 1
        elif tag == _L:
            end = flat.index(None, at + 1)
            add(Loaded(_pairs(flat[at + 1 : end])))
            at = end + 1
        else:
            raise ValueError(f"journal: unknown event tag {tag!r} at {at}")
    return events


def _decode_recorded(flat: list[Any], at: int, add: Callable[[Any], None]) -> int:
    worker, peak_rss_mb, count = flat[at + 1 : at + 4]
    at += 4
    runs = []
    for _ in range(count):
        started, ok, n_keys = flat[at : at + 3]
        at += 3
        keys = flat[at : at + n_keys]
        at += n_keys
        n_walls = flat[at]
        walls = flat[at + 1 : at + 1 + n_walls]
        at += 1 + n_walls
        runs.append(_new(KeysRun, (keys, started, walls, ok)))
    add(_new(TasksRecorded, (worker, peak_rss_mb, runs)))
    return at


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    pairs = iter(items)
    return list(zip(pairs, pairs, strict=True))
