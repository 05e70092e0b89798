"""The deadlines the pool's manager enforces: the per-task limits, ``per_job_timeout`` and
``max_ram_per_worker`` (kill or warn), and the stall watchdog, ``task_timeout``.

With ``limits="kill"`` (the default) a worker whose task runs too long, or that uses too much
memory, is killed; the manager then retries or fails the task by cause. With ``limits="warn"``
the task goes on and the pool logs one warning per task and limit: CARS never enforced these
two keys, so tiles that passed there must not be killed here. The stall watchdog is the same in
both: when no job finished anywhere for ``task_timeout``, the busy workers are restarted.

"Too long" is measured from the worker's last progress (its last result, or the start of its
job): a warned worker has no timeout deadline until its next result comes, so the manager's
wait does not spin on a deadline already past.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ... import failures
from .processes import StopReason, Worker

__all__ = ["MEMORY_SAMPLE_SECONDS", "Deadlines"]

logger = logging.getLogger("orchestrix")

#: how often the memory of busy workers is sampled against ``max_ram_per_worker``
MEMORY_SAMPLE_SECONDS = 0.1


class Deadlines:
    """The deadlines of ``config`` over the busy workers. ``last_completion`` is when a job last
    finished, or work started (the manager sets it)."""

    def __init__(self, config: Any) -> None:
        self.timeout: float | None = config.per_job_timeout
        self.memory_mb: float = config.max_ram_per_worker
        self.stall_limit: float | None = config.task_timeout
        self.warn = config.limits == "warn"
        self.next_sample = 0.0
        self.last_completion = time.monotonic()

    def next(self, busy: list[Worker], pending: bool) -> list[float]:
        """When the deadlines must next be looked at, for these busy workers (``pending``: jobs
        wait for a worker)."""
        found = []
        if self.timeout is not None:
            timeout = self.timeout
            found += [w.last_progress + timeout for w in busy if w.timed_out != w.last_progress]
        if busy:
            found.append(self.next_sample)
        if self.stall_limit is not None and (busy or pending):
            found.append(self.last_completion + self.stall_limit)
        return found

    def enforce(self, busy: list[Worker], pending: bool, now: float) -> None:
        self._enforce_limits(busy, now)
        limit = self.stall_limit
        if limit is not None and now - self.last_completion > limit and (busy or pending):
            self._restart_stalled(busy, now)

    def _restart_stalled(self, busy: list[Worker], now: float) -> None:
        logger.warning(
            "orchestrix: no task finished for task_timeout=%s s; restarting the pool",
            self.stall_limit,
        )
        for worker in busy:
            if worker.outstanding:
                worker.outstanding[0].stalls += 1
            worker.kill(StopReason.STALL)
        self.last_completion = now

    def _enforce_limits(self, busy: list[Worker], now: float) -> None:
        if self.timeout is not None:
            for worker in busy:
                if now - worker.last_progress > self.timeout:
                    self._over_time(worker)
        if now >= self.next_sample:
            self.next_sample = now + MEMORY_SAMPLE_SECONDS
            for worker in busy:
                if not worker.watched:
                    continue  # killed for its time just now
                rss = worker.sample_memory_mb()  # its peak is recorded in both modes
                if rss > self.memory_mb:
                    self._over_memory(worker, rss)

    def _over_time(self, worker: Worker) -> None:
        if not self.warn:
            worker.kill(StopReason.TIMEOUT)
            return
        if worker.timed_out == worker.last_progress:
            return  # warned already, and no result since
        worker.timed_out = worker.last_progress
        job = worker.running_job()
        if job is not None and self.timeout is not None:
            warning = failures.timeout_warning(job.unit.key, job.unit.name, self.timeout)
            logger.warning("orchestrix: %s", warning)

    def _over_memory(self, worker: Worker, rss_mb: float) -> None:
        if not self.warn:
            worker.kill(StopReason.MEMORY)
            return
        job = worker.running_job()
        if job is None or job.id == worker.memory_warned:
            return
        worker.memory_warned = job.id
        warning = failures.memory_warning(job.unit.key, job.unit.name, rss_mb, self.memory_mb)
        logger.warning("orchestrix: %s", warning)
