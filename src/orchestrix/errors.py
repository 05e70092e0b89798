"""The one exception hierarchy of orchestrix.

Every error raised by orchestrix derives from :class:`OrchestrixError`. Errors about a task carry
the task's ``key`` and ``name``; the exception the task raised is chained as ``__cause__``, and when
the task ran in another process that exception's own ``__cause__`` is a :class:`RemoteTraceback`
holding the traceback text from the worker (the convention of ``concurrent.futures``).

A task that raised an exception of its own fails with a :class:`TaskError` that is *also* of the
exception's class (see :func:`typed_error`): ``except ZeroDivisionError`` catches it as it would
around ``concurrent.futures``, dask or a plain call, and ``except TaskError`` still does.
"""

from __future__ import annotations

import threading
from typing import Any


class OrchestrixError(Exception):
    """Root of every orchestrix error."""


class ConfigError(OrchestrixError, ValueError):
    """An invalid configuration: unknown key, wrong type or range, or an unavailable mode."""


class ConfigWarning(UserWarning):
    """A configuration key that has no effect in its mode, and is ignored.

    A key of another mode (``walltime`` in ``local_dask``) or a CARS key orchestrix has no use for
    (``config_name``): a CARS configuration is accepted as it is, and the key is dropped from the
    frozen config. A key known to no mode (a typo) is a :class:`ConfigError` instead."""


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
    """A task failed. ``key`` and ``name`` identify it; ``__cause__`` is what it raised.

    When the task raised an exception of its own, the error is also an instance of that
    exception's class (its class is ``TaskError(ZeroDivisionError)``, made by
    :func:`typed_error`), and ``raised`` is that class; otherwise ``raised`` is None."""

    raised: type[BaseException] | None = None

    def __init__(self, key: str, name: str, message: str) -> None:
        # BaseException's own __init__, not the mixed-in class's: a typed error's second base
        # may take other arguments (UnicodeDecodeError takes five).
        Exception.__init__(self, message)
        self.key = key
        self.name = name

    def __str__(self) -> str:
        # the message, whatever a mixed-in class prints (KeyError would quote it)
        return str(self.args[0]) if self.args else ""

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


class TaskTimeoutError(TaskError, TimeoutError):
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


class StallError(TaskError, TimeoutError):
    """No task finished for ``task_timeout`` seconds, twice: the run is stopped. Like
    :class:`TaskTimeoutError`, it is a :class:`TimeoutError`."""


class NoWorkerError(TaskError):
    """No worker job joined the cluster within ``worker_start_timeout`` seconds of the start
    (``slurm_dask``, ``pbs_dask``): the tasks waiting for one fail. The message shows the end
    of the job logs."""


class OrchestratorInTaskError(OrchestrixError, TypeError):
    """A task's function or argument holds the Orchestrator, which cannot go to a worker.

    Raised when such a task is called (its key is computed), submitted, or sent to a worker:
    the same error in every mode, although the sequential mode could have run it."""


ORCHESTRATOR_IN_TASK = (
    "a task cannot use the Orchestrator (it is an argument of the task, or its function holds "
    "it): the orchestrator lives in the caller's process, with its workers, files and locks, "
    "and cannot be sent to a worker; pass the task the values it needs, and call compute, "
    "submit or map from the caller"
)
"""The message of :class:`OrchestratorInTaskError`."""


class LargeArgumentWarning(UserWarning):
    """A task's argument is large (about 100 MB or more) and is hashed or pickled at each call.

    Warned once per task name. A ``.npy`` path, a read-only memory map (named by its file, not
    hashed) or ``map_tiles`` (each task reads its window only) avoid the cost."""


REFUSED_AFTER_CLOSE = "cannot schedule new work after the orchestrator was closed"
"""The RuntimeError's text for a call made after close (as concurrent.futures refuses one)."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in another process."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


# -- errors that are also of the class the task raised -----------------------------------------

_typed_classes: dict[tuple[type[TaskError], type[BaseException]], type[TaskError] | None] = {}
_typed_lock = threading.Lock()

#: attributes of the task's exception copied onto its typed error, beyond its ``__dict__``
#: (``except OSError as e: e.errno`` reads them)
_OS_ERROR_FIELDS = ("errno", "strerror", "filename", "filename2")


def typed_error(error: TaskError, exc: BaseException) -> TaskError:
    """``error``, remade as an instance of both its class and ``type(exc)`` where it can be.

    ``exc`` is what the task raised. Its attributes are copied (those of ``error`` win), so
    ``except MyError as e: e.code`` reads what the task set. Left as it is: an exception that is
    not an :class:`Exception` (SystemExit, KeyboardInterrupt: a caller's ``except Exception``
    must still see the failure, and the caller must not exit for a worker's exit), an orchestrix
    error (a task that ran an orchestrator of its own), and a class that cannot be a second base
    (its layout conflicts, or it refuses subclasses)."""
    kind = type(exc)
    if not isinstance(exc, Exception) or isinstance(exc, OrchestrixError):
        return error
    base = untyped_class(error)
    cls = _typed_class(base, kind)
    if cls is None:
        return error
    state = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
    if isinstance(exc, OSError):
        state.update((field, getattr(exc, field)) for field in _OS_ERROR_FIELDS)
    state.update(vars(error))
    try:
        typed = _rebuild_typed(base, error.__reduce__()[1], kind)
        typed.__setstate__(state)
    except Exception:  # noqa: BLE001 - e.g. the raised class has a read-only property
        return error
    typed.__cause__ = error.__cause__
    typed.__context__ = error.__context__
    typed.__suppress_context__ = error.__suppress_context__
    return typed


def untyped_class(error: TaskError) -> type[TaskError]:
    """The orchestrix class of ``error``: ``TaskError`` for a ``TaskError(KeyError)``."""
    cls = type(error)
    if error.raised is None:
        return cls
    return next(c for c in cls.__mro__[1:] if issubclass(c, TaskError) and c.raised is None)


def _typed_class(base: type[TaskError], raised: type[BaseException]) -> type[TaskError] | None:
    """The class ``base(raised)``, made once per pair; None where the two cannot be mixed."""
    with _typed_lock:
        if (base, raised) in _typed_classes:
            return _typed_classes[(base, raised)]
        name = f"{base.__name__}({raised.__name__})"
        namespace = {
            "__module__": base.__module__,
            "__qualname__": name,
            "raised": raised,
            "__reduce__": _reduce_typed,
        }
        try:
            cls: type[TaskError] | None = type(name, (base, raised), namespace)
        except TypeError:  # a layout conflict, a final class, a metaclass that refuses
            cls = None
        _typed_classes[(base, raised)] = cls
        return cls


def _reduce_typed(self: TaskError) -> tuple[Any, ...]:
    """Pickle a typed error as its orchestrix class's arguments plus the class it also is."""
    base = untyped_class(self)
    args = base.__reduce__(self)[1]
    state = dict(vars(self))
    if isinstance(self, OSError):  # members, not in the instance's __dict__
        state.update((field, getattr(self, field)) for field in _OS_ERROR_FIELDS)
    return (_rebuild_typed, (base, args, self.raised), state)


def _rebuild_typed(
    base: type[TaskError], args: tuple[Any, ...], raised: type[BaseException] | None
) -> TaskError:
    cls = _typed_class(base, raised) if raised is not None else None
    return (cls or base)(*args)
