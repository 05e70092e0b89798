"""The per-task limits of the pool, ``per_job_timeout`` and ``max_ram_per_worker``: kill or warn.

With ``limits="kill"`` (the default) a worker whose task runs too long, or that uses too much
memory, is killed; the manager then retries or fails the task by cause. With ``limits="warn"``
the task goes on and the pool logs one warning per task and limit: CARS never enforced these
two keys, so tiles that passed there must not be killed here. The stall watchdog
(``task_timeout``) is the manager's, and the same in both.

"Too long" is measured from the worker's last progress (its last result, or the start of its
job): a warned worker has no timeout deadline until its next result comes, so the manager's
wait does not spin on a deadline already past.
"""

from __future__ import annotations

import logging
from typing import Any

from ... import failures
from .processes import StopReason, Worker

__all__ = ["MEMORY_SAMPLE_SECONDS", "TaskLimits"]

logger = logging.getLogger("orchestrix")

#: how often the memory of busy workers is sampled against ``max_ram_per_worker``
MEMORY_SAMPLE_SECONDS = 0.1


class TaskLimits:
    """Enforces, or warns about, the per-task limits of ``config`` on the busy workers."""

    def __init__(self, config: Any) -> None:
        self.timeout: float | None = config.per_job_timeout
        self.memory_mb: float = config.max_ram_per_worker
        self.warn = config.limits == "warn"
        self.next_sample = 0.0

    def deadlines(self, busy: list[Worker]) -> list[float]:
        """When the limits must next be looked at, for these busy workers."""
        found = []
        if self.timeout is not None:
            timeout = self.timeout
            found += [w.last_progress + timeout for w in busy if w.timed_out != w.last_progress]
        if busy:
            found.append(self.next_sample)
        return found

    def enforce(self, busy: list[Worker], now: float) -> None:
        if self.timeout is not None:
            for worker in busy:
                if now - worker.last_progress > self.timeout:
                    self._over_time(worker)
        if now >= self.next_sample:
            self.next_sample = now + MEMORY_SAMPLE_SECONDS
            for worker in busy:
                if worker.stopping is not None:
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
