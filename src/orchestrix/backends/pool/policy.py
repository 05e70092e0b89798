"""The rules of the ``multiprocessing`` pool that get tuned, apart from its mechanism.

Pure functions and small value objects: no processes, pipes or locks. The manager
(:mod:`.multiprocessing`) asks them how many jobs to send, whether a worker may get more before it
is done, what to do with a job whose worker ended, and when workers that cannot start mean the run
must stop.
"""

from __future__ import annotations

import enum
import math

__all__ = [
    "BATCH_SECONDS",
    "MAX_BATCH",
    "MAX_STARTUP_FAILURES",
    "PREFETCH_BELOW_SECONDS",
    "Cause",
    "StartupWatch",
    "Verdict",
    "batch_size",
    "jobs_to_take",
    "may_prefetch",
    "running_mean",
    "verdict",
]

#: a batch of small jobs should keep a worker busy about this long
BATCH_SECONDS = 0.02
MAX_BATCH = 512
#: below this mean job time a worker gets its next batch before it finishes the current one
PREFETCH_BELOW_SECONDS = 0.005
#: workers that die before running anything, in a row, before the pool gives up
MAX_STARTUP_FAILURES = 3
#: a job running while the pool was restarted for a stall is run again this many times
STALL_RETRIES = 1


class Cause(enum.Enum):
    """Why the worker running a job ended (see :class:`.processes.StopReason` for those the
    pool chose); CRASH when it ended on its own."""

    #: it ended on its own: a crash, a signal, an ``os._exit`` in a task
    CRASH = "crash"
    #: the pool killed it: its job ran longer than ``per_job_timeout``
    TIMEOUT = "timeout"
    #: the pool killed it: it went over ``max_ram_per_worker``
    MEMORY = "memory"
    #: the pool restarted it: no job finished anywhere for ``task_timeout``
    STALL = "stall"
    #: the pool is closing
    CLOSE = "close"


class Verdict(enum.Enum):
    """What becomes of a job whose worker ended while running it."""

    #: run it again, counted as an attempt (``retries``)
    RETRY = "retry"
    #: run it again without counting an attempt: the stall was perhaps not its fault
    REQUEUE = "requeue"
    #: report its error
    FAIL = "fail"


def verdict(cause: Cause, attempts: int, retries: int, stalls: int) -> Verdict:
    """``attempts``: the job's attempts so far, this one included; ``stalls``: the stalls it was
    running in, this one included.

    A crash or a timeout may be chance (a node's memory, a slow disk): retried up to
    ``retries``. Going over the memory limit is the task's own size: retrying cannot help.
    A stall is retried once, then fails (two stalls while it ran are its own)."""
    if cause in (Cause.CRASH, Cause.TIMEOUT):
        return Verdict.RETRY if attempts <= retries else Verdict.FAIL
    if cause is Cause.STALL:
        return Verdict.REQUEUE if stalls <= STALL_RETRIES else Verdict.FAIL
    return Verdict.FAIL


def batch_size(mean_seconds: float | None) -> int:
    """How many jobs to send at once: one until a job's time is known, then enough to keep a
    worker busy for ``BATCH_SECONDS``."""
    if mean_seconds is None:
        return 1
    return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(mean_seconds, 1e-6))))


def may_prefetch(outstanding: int, size: int, mean_seconds: float | None) -> bool:
    """Whether a worker with ``outstanding`` jobs may get a batch more now. A worker that is idle
    always may; one that is busy only with small jobs, so that it never waits for the next
    batch; long jobs stay in the queue for whichever worker is free first."""
    if not outstanding:
        return True
    small = mean_seconds is not None and mean_seconds < PREFETCH_BELOW_SECONDS
    return small and outstanding <= size


def jobs_to_take(size: int, pending: int, active_workers: int, quota: float) -> int:
    """How many of the ``pending`` jobs one worker gets: a batch, but no more than its share
    (the others get some too) nor than it may still run before it retires (``quota``)."""
    share = math.ceil(pending / max(active_workers, 1))
    return int(max(0, min(size, share, quota)))


def running_mean(mean: float | None, seconds: float) -> float:
    """The mean job time, weighted to the recent jobs (it sets the batch size)."""
    return seconds if mean is None else 0.8 * mean + 0.2 * seconds


class StartupWatch:
    """Counts workers that end before they have run anything, in a row."""

    def __init__(self, limit: int = MAX_STARTUP_FAILURES) -> None:
        self.limit = limit
        self.in_a_row = 0

    def worker_ended(self, ran_anything: bool, stopped_by_pool: bool) -> bool:
        """Note a worker's end; True when the pool must give up (workers cannot start)."""
        if ran_anything or stopped_by_pool:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        return self.in_a_row >= self.limit
