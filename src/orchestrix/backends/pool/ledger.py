"""The one place where the ``multiprocessing`` pool accounts for every job it was given.

A job is in the ledger from ``submit`` until it is reported; it leaves only through
:meth:`Ledger.settle` (or a cancel), under the lock, so each job is reported exactly once,
whichever way it ends: a result, a failure, a retry given up, a broken pool, a close. Jobs waiting
for a worker are queued here too; jobs sent to a worker are also on that worker's list, which is
the manager's alone.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ...errors import REFUSED_AFTER_CLOSE, OrchestrixError, TaskError
from ...graph.factorize import WorkUnit
from ...worker.execute import UnitOutcome
from ..base import Sink, Started

__all__ = ["Job", "Ledger"]

logger = logging.getLogger("orchestrix")


class Job:
    __slots__ = ("attempts", "handed", "id", "inputs", "sink", "stalls", "started", "unit")

    def __init__(
        self,
        job_id: int,
        unit: WorkUnit,
        inputs: Mapping[str, Any],
        sink: Sink,
        started: Started | None = None,
    ) -> None:
        self.id = job_id
        self.unit = unit
        self.inputs = inputs  # kept until the job ends: it holds the dump files it reads
        self.sink = sink
        self.started = started  # called once, when first handed to a worker
        self.handed = False  # taken for a worker: it can no longer be withdrawn
        self.attempts = 0
        self.stalls = 0

    def announce(self) -> None:
        """Tell whoever asked that a worker has the job (once: not again on a retry)."""
        started, self.started = self.started, None
        if started is not None:
            try:
                started()
            except BaseException:
                logger.exception("orchestrix: noting that %r started failed", self.unit.name)


class Ledger:
    """Every job not yet reported, and the queue of those waiting for a worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: deque[Job] = deque()  # read without the lock only by the manager
        self._live: dict[int, Job] = {}
        self.closed = False
        self.broken: str | None = None  # why the pool cannot run jobs any more
        self._wake_sent = False  # a wake-up byte is on its way to the manager

    def add(self, job: Job) -> bool:
        """Queue a new job; True when the manager must be woken up for it."""
        with self.lock:
            if self.broken is not None:
                raise OrchestrixError(f"the worker pool cannot run tasks: {self.broken}")
            if self.closed:
                raise RuntimeError(REFUSED_AFTER_CLOSE)
            self.pending.append(job)
            self._live[job.id] = job
            wake = not self._wake_sent
            self._wake_sent = True
        return wake

    def woken(self) -> None:
        """The manager has read the wake-up bytes; a job added from now on sends a new one."""
        with self.lock:
            self._wake_sent = False

    def close(self) -> bool:
        """Refuse new jobs; False if closed already."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            return True

    def cancel(self, job_ids: Iterable[int]) -> None:
        with self.lock:
            for job_id in job_ids:
                self._live.pop(job_id, None)  # a queued job is skipped, a sent one ignored

    def withdraw(self, job_id: int) -> bool:
        """Take back a job no worker was handed yet; False if one was (it runs on)."""
        with self.lock:
            job = self._live.get(job_id)
            if job is None or job.handed:
                return False
            del self._live[job_id]  # still queued: take skips it
            return True

    def take(self, count: int) -> list[Job]:
        """Up to ``count`` queued jobs for a worker, skipping those cancelled; from now on
        they cannot be withdrawn."""
        jobs: list[Job] = []
        with self.lock:
            while self.pending and len(jobs) < count:
                job = self.pending.popleft()
                if job.id in self._live:
                    job.handed = True
                    jobs.append(job)
        for job in jobs:
            job.announce()
        return jobs

    def requeue(self, jobs: list[Job]) -> None:
        """Put jobs back first in line, in their order."""
        with self.lock:
            self.pending.extendleft(reversed(jobs))

    def settle(self, job: Job, outcome: UnitOutcome) -> None:
        """Report the job's outcome, unless it was reported or cancelled already."""
        with self.lock:
            live = self._live.pop(job.id, None) is not None
        if not live:
            return  # cancelled, or ended another way first: nobody waits for this outcome
        try:
            job.sink(outcome)
        except BaseException:
            logger.exception("orchestrix: delivering the outcome of %r failed", job.unit.name)

    def settle_error(self, job: Job, error: TaskError) -> None:
        self.settle(job, UnitOutcome(job.unit, failure=error))  # a verdict: reported as it is

    def settle_all(self, error_for: Callable[[WorkUnit], TaskError]) -> None:
        with self.lock:
            jobs = list(self._live.values())
        for job in jobs:
            self.settle_error(job, error_for(job.unit))

    def break_down(self, message: str, error_for: Callable[[WorkUnit], TaskError]) -> None:
        """The pool cannot go on: every job not reported fails, and so does every later one."""
        with self.lock:
            self.broken = message
            self.pending.clear()
        self.settle_all(error_for)
