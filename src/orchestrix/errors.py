"""The one exception hierarchy of orchestrix.

Every error raised by orchestrix derives from :class:`OrchestrixError`. Errors about a task carry
the task's ``key`` and ``name``; the exception the task raised is chained as ``__cause__``, and when
the task ran in another process that exception's own ``__cause__`` is a :class:`RemoteTraceback`
holding the traceback text from the worker (the convention of ``concurrent.futures``).
"""

from __future__ import annotations


class OrchestrixError(Exception):
    """Root of every orchestrix error."""


class ConfigError(OrchestrixError, ValueError):
    """An invalid configuration: unknown key, wrong type or range, or an unavailable mode."""


class DiskFullError(OrchestrixError):
    """A file could not be written for want of space (or of quota) in ``directory``.

    ``needed_bytes`` is the size of the whole file (None where it could not be measured),
    ``free_bytes`` what the file system had left for this user. Nothing of the file is left."""

    def __init__(
        self, message: str, directory: str = "", needed_bytes: int | None = None,
        free_bytes: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.directory = directory
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes

    def __reduce__(self):  # a worker's error crosses to the caller whole
        return (type(self), (str(self), self.directory, self.needed_bytes, self.free_bytes))


class TaskError(OrchestrixError):
    """A task failed. ``key`` and ``name`` identify it; ``__cause__`` is what it raised."""

    def __init__(self, key: str, name: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.name = name

    def __reduce__(self):  # keep key and name when the error crosses a process boundary
        return (type(self), (self.key, self.name, str(self)))


class UpstreamTaskError(TaskError):
    """A task did not run because a task it depends on failed.

    ``upstream_key`` and ``upstream_name`` name the task that failed first; ``__cause__`` is that
    task's :class:`TaskError`.
    """

    def __init__(
        self, key: str, name: str, message: str, upstream_key: str = "", upstream_name: str = ""
    ) -> None:
        super().__init__(key, name, message)
        self.upstream_key = upstream_key
        self.upstream_name = upstream_name

    def __reduce__(self):
        args = (self.key, self.name, str(self), self.upstream_key, self.upstream_name)
        return (type(self), args)


class WorkerCrashedError(TaskError):
    """The worker process running the task died (crash, signal). ``exitcode`` is its exit code,
    or minus the signal number, as in ``multiprocessing``."""

    def __init__(self, key: str, name: str, message: str, exitcode: int | None = None) -> None:
        super().__init__(key, name, message)
        self.exitcode = exitcode

    def __reduce__(self):
        return (type(self), (self.key, self.name, str(self), self.exitcode))


class TaskTimeoutError(TaskError):
    """The task ran longer than ``per_job_timeout`` (``limit``, seconds); its worker was killed."""

    def __init__(self, key: str, name: str, message: str, limit: float = 0.0) -> None:
        super().__init__(key, name, message)
        self.limit = limit

    def __reduce__(self):
        return (type(self), (self.key, self.name, str(self), self.limit))


class WorkerMemoryError(TaskError):
    """The worker running the task went over ``max_ram_per_worker``; it was killed.

    ``peak_rss_mb`` is the memory seen last, ``limit_mb`` the limit (both in MB)."""

    def __init__(
        self, key: str, name: str, message: str, peak_rss_mb: float = 0.0, limit_mb: float = 0.0
    ) -> None:
        super().__init__(key, name, message)
        self.peak_rss_mb = peak_rss_mb
        self.limit_mb = limit_mb

    def __reduce__(self):
        return (type(self), (self.key, self.name, str(self), self.peak_rss_mb, self.limit_mb))


class CanaryError(TaskError):
    """A task of the canary run (``canary=N``: the first N targets, run before the others)
    failed, so the rest of the graph was not scheduled. ``key`` and ``name`` are the failed
    target's; ``__cause__`` is its :class:`TaskError`."""


class StallError(TaskError):
    """No task finished for ``task_timeout`` seconds, twice: the run is stopped."""


class NoWorkerError(TaskError):
    """No worker job joined the cluster within ``worker_start_timeout`` seconds of the start
    (``slurm_dask``, ``pbs_dask``): the tasks waiting for one fail. The message shows the end
    of the job logs."""


REFUSED_AFTER_CLOSE = "cannot schedule new work after the orchestrator was closed"
"""The RuntimeError's text for a call made after close (as concurrent.futures refuses one)."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in another process."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
