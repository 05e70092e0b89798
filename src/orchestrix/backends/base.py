"""The contract between the engine and a backend.

The engine owns the graph and decides what is ready and in which order; a backend only runs the
units it is handed and reports each outcome to the ``sink`` given with the unit, from whatever
thread it likes. Several runs (a ``compute`` inside a loop over ``as_completed``, futures from
``submit``, calls from two threads) can share one backend: each unit carries its own sink.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..graph.factorize import WorkUnit
from ..graph.shared import Shared, ShareOwner, shared_id
from ..records import UnitLabels, UnitRun
from ..worker.execute import UnitOutcome
from ..worker.observe import WorkerSettings

__all__ = ["Backend", "Recorder", "Sink", "worker_settings"]

#: receives the outcome of one unit; may be called from a backend thread
Sink = Callable[[UnitOutcome], None]

#: told, once, that a worker has the unit: it will run (or fail), it can no longer be withdrawn
Started = Callable[[], object]


class Recorder(Protocol):
    """What a backend tells the record keeper of its run (the session's
    :class:`~orchestrix.monitoring.monitor.Monitor`), from whatever thread it reports from."""

    #: whether task states (sent, started) are wanted: a journal or callbacks listen. Backends
    #: skip building the events when not.
    tracks_states: bool

    def record_outcome(self, outcome: UnitOutcome, worker: str) -> None:
        """A unit ran; its time and memory were measured over the unit alone."""

    def record_units(
        self, worker: str, cpu_per_wall: float, peak_rss_mb: float | None, entries: list[UnitRun]
    ) -> None:
        """Units ran in one window of a worker (see ``Monitor.record_units``)."""

    def note_started(
        self, units: Sequence[UnitLabels], worker: str, when: float | None = None
    ) -> None:
        """These units were sent to ``worker`` (or began there at ``when``, epoch seconds)."""

    def note_retry(self, unit: UnitLabels | None = None) -> None:
        """A unit goes back to the queue (its worker died, or stalled)."""


class Backend(ABC):
    """Runs units of work. One module per backend under ``orchestrix.backends``.

    ``monitor`` is the record keeper of the run, created by the orchestrator's session: every
    unit the backend runs is recorded there."""

    def __init__(self, config: Any, monitor: Recorder) -> None:
        self.config = config
        self.monitor = monitor
        #: what this backend's Shared handles belong to; closed with the backend
        self.shares = ShareOwner()

    #: True for backends that schedule whole graphs themselves (dask): the engine then calls
    #: :meth:`submit_graph` once instead of handing over ready units
    runs_graphs: bool = False
    #: the objects besides the config this backend's constructor takes (dask: ``client``)
    takes: tuple[str, ...] = ()

    def submit_graph(self, units: list[WorkUnit], targets: list[str], sink: Sink) -> int:
        """Run every unit (in topological order, deps by key); call ``sink`` with the outcome of
        each unit whose key is in ``targets``. Returns a job id for :meth:`cancel`."""
        raise NotImplementedError

    def capacity(self) -> int:
        """How many units the engine may hand over before it waits for an outcome."""
        return 1

    @abstractmethod
    def start(self) -> None:
        """Acquire resources (processes, clusters). Called once, before the first submit."""

    @abstractmethod
    def submit(
        self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink, started: Started | None = None
    ) -> int:
        """Run ``unit`` (all its inputs are given); call ``sink`` with its outcome, and first
        ``started`` (if given) once a worker has it. Returns a job id for :meth:`cancel` and
        :meth:`withdraw`."""

    @abstractmethod
    def cancel(self, job_ids: Iterable[int]) -> None:
        """Drop these jobs if not started; outcomes of started ones are not reported."""

    def withdraw(self, job_id: int) -> bool:
        """Take back a job that no worker has yet, so that it never runs: True if it was;
        False once a worker has it (it then runs and reports its outcome). A backend that
        runs a job within :meth:`submit` has nothing to take back."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent; also safe if ``start`` was never called."""

    def running(self) -> int:
        """How many units are running or sent to workers, not finished (for display)."""
        return 0

    def materialize(self, value: Any) -> Any:
        """Turn an outcome's value into what the caller receives (e.g. open memory maps)."""
        return value

    def share(self, value: Any, broadcast: bool = True) -> Shared:
        """A handle of ``value`` for tasks' arguments, whose tasks receive ``value`` (see
        ``Orchestrator.scatter``). Here, for backends that run tasks in the caller's process:
        the value itself, no copy."""
        return Shared(shared_id(value), self.shares, value=value)


def worker_settings(config: Any, own_process: bool = True) -> WorkerSettings:
    """What the processes that run tasks must set up (logs, profilers) for ``config``."""
    out_dir = config.out_dir
    return WorkerSettings(
        out_dir=None if out_dir is None else os.path.abspath(out_dir),
        profiling=config.profiling.mode,
        loop_testing=config.profiling.loop_testing,
        own_process=own_process,
    )
