"""The records that cross a thread or process boundary on their way to the monitor and its
consumers, each defined once and read by name.

- :class:`UnitRun`: a unit that ran, as a backend reports it to :meth:`Monitor.record_units`;
- :class:`TaskRecord`: the monitor's record of one task execution (read by the summary, the
  report, the progress bars, from other threads than the one that recorded it);
- :class:`FailureRecord`: a failure the caller is told of;
- the task events posted to the consumers (see :mod:`orchestrix.monitoring.events`):
  :class:`Registered`, :class:`Started`, :class:`Recorded`, :class:`FailureRecord` (the failed
  event is the record itself), :class:`Retried`, :class:`Stopped`, :class:`Loaded`. Consumers
  dispatch on the type;
- :class:`TaskState`: the states of a task, in the journal and in the callbacks' events.

Pure (standard library only): backends build these records, the monitor, the journal and the
callbacks read them, and none of them needs to import another to share a definition.

:class:`UnitLabels` and :class:`TaskLabels` say what the monitor and the events read of a unit
and of its tasks: a :class:`~orchestrix.graph.factorize.WorkUnit` is one, and so is a
:class:`LabelledUnit` (a unit known by its labels only, as the dask workers report it).

The hot path (a :class:`TaskRecord` and a :class:`UnitRun` per task) builds records with
``tuple.__new__(Record, values)``: a NamedTuple's own ``__new__`` is a Python function, twice the
cost, and this runs for every task of every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple, Protocol

__all__ = [
    "EVENT_TYPES",
    "Event",
    "FailureRecord",
    "LabelledTask",
    "LabelledUnit",
    "Loaded",
    "Recorded",
    "Registered",
    "Retried",
    "Started",
    "Stopped",
    "TaskLabels",
    "TaskRecord",
    "TaskState",
    "UnitLabels",
    "UnitRun",
    "Usage",
]


class TaskState(str, Enum):
    """The state of a task, in the journal and in ``TaskEvent.state``. Stored as its text (a
    member equals its text: ``TaskState.DONE == "DONE"``), so journals of every version read
    alike. A task goes REGISTERED -> RUNNING (TESTING in a canary run) -> DONE or FAILED."""

    #: part of a run, not sent to a worker yet (again after a retry: its worker died)
    REGISTERED = "REGISTERED"
    #: sent to a worker in the canary run (``canary=N``), before the other targets
    TESTING = "TESTING"
    #: sent to a worker
    RUNNING = "RUNNING"
    #: finished; or, in a resumed run, a final task whose stored result was loaded
    DONE = "DONE"
    #: raised, crashed its worker, timed out or went over memory; the caller was told
    FAILED = "FAILED"
    #: was running or waiting when its run stopped (an error elsewhere, Ctrl-C, close, the
    #: caller killed)
    KILLED = "KILLED"

    __str__ = str.__str__  # the text, in messages and f-strings, on every Python version


class TaskLabels(Protocol):
    """What the monitor reads of a task: its key and its name."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...


class UnitLabels(Protocol):
    """What the monitor and the events read of a unit: its key, and its tasks in order."""

    @property
    def key(self) -> str: ...

    @property
    def tasks(self) -> Sequence[TaskLabels]: ...


class LabelledTask(NamedTuple):
    """A task known by its labels only."""

    key: str
    name: str


class LabelledUnit(NamedTuple):
    """A unit known by its labels only (a :class:`UnitLabels`)."""

    key: str
    tasks: Sequence[LabelledTask]


class Usage(NamedTuple):
    """What a process used over a window of work (a unit, or a worker's batch)."""

    #: CPU seconds (of the process, or of the thread that ran the tasks)
    cpu_s: float
    #: the highest resident memory of the process over the window, MB
    peak_rss_mb: float


class UnitRun(NamedTuple):
    """A unit that ran, as a backend reports it."""

    unit: UnitLabels
    #: when its first task began, epoch seconds
    started: float
    #: the wall seconds of each task that ran, in order; the last one failed unless ``ok``
    walls: list[float]
    #: every task of the unit ran and none failed
    ok: bool
    #: private memory growth (MB) per task, in loop testing only
    growth_mb: list[float] | None


class TaskRecord(NamedTuple):
    """The monitor's record of one task execution. The CPU time is ``wall * cpu_per_wall``: the
    share is kept rather than the product, so that recording allocates nothing but the record."""

    key: str
    name: str
    worker: str
    #: epoch seconds
    start: float
    #: wall seconds
    wall: float
    #: CPU seconds per wall second, over the window the task ran in
    cpu_per_wall: float
    #: peak RSS of the worker over that window (MB), None where not measured
    peak_rss_mb: float | None
    ok: bool


class FailureRecord(NamedTuple):
    """A failure the caller is told of; also the "failed" event."""

    key: str
    name: str
    worker: str | None
    #: ``"Type: message"`` of the error (None where only the traceback travelled: the journal)
    error: str | None
    traceback: str | None
    #: the failed call in one line, ``load(i=3)`` (see :mod:`orchestrix.graph.inputs`); None
    #: where not known (a journal written before it was kept)
    inputs: str | None = None


class Registered(NamedTuple):
    """A run will run these units (``canary``: in its test run, before the others)."""

    units: Sequence[UnitLabels]
    canary: bool


class Started(NamedTuple):
    """These units were sent to ``worker`` (or began there) at ``when``, epoch seconds."""

    units: Sequence[UnitLabels]
    worker: str
    when: float


class Recorded(NamedTuple):
    """Units ran in one window of ``worker`` (see ``Monitor.record_units``)."""

    worker: str
    peak_rss_mb: float | None
    runs: list[UnitRun]


class Retried(NamedTuple):
    """A unit goes back to the queue after its worker died (or stalled)."""

    unit: UnitLabels


class Stopped(NamedTuple):
    """The run stopped (an error, Ctrl-C, closing) while these units could run."""

    units: Sequence[UnitLabels]


class Loaded(NamedTuple):
    """Final tasks ``(key, name)`` whose stored results a resumed run loaded."""

    tasks: list[tuple[str, str]]


#: every event a consumer may be posted
EVENT_TYPES = (Registered, Started, Recorded, FailureRecord, Retried, Stopped, Loaded)
#: one of EVENT_TYPES
Event = Registered | Started | Recorded | FailureRecord | Retried | Stopped | Loaded
