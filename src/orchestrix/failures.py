"""Every failure becomes the error the caller sees here, and only here.

The data flows one way. A backend reports a failed unit as a :data:`Failure`, one of two things:

* a :class:`TaskFailure`, the *fact* of what a task raised: the raw exception and, when it
  crossed a process boundary, its formatted traceback (a traceback object does not pickle);
* a :class:`~orchestrix.errors.TaskError` the backend already decided on (a *verdict*: a crash,
  a timeout, a memory limit, a stall, no worker, a close), built by one of the functions below.

The union is the whole protocol: an ``isinstance`` tells them apart, so mypy sees which fields
each has, and no flag says "this exception is already the final error". The caller's path turns
a failure into the final error once, with :func:`caller_error` (the engine's
``reported_error`` is its one call site); nothing converts a :class:`TaskError` back into a
fact. A task that itself raises a :class:`TaskError` (it ran another orchestrator) is a fact
like any other exception, since it comes in a :class:`TaskFailure`.

This module is pure: it imports only :mod:`orchestrix.errors` and the standard library, so a
worker process can import it cheaply and the messages can be tested without processes.
"""

from __future__ import annotations

import pickle
import signal
from dataclasses import dataclass
from typing import TypeAlias

from .errors import (
    CanaryError,
    NoWorkerError,
    RemoteTraceback,
    StallError,
    TaskError,
    TaskTimeoutError,
    UpstreamTaskError,
    WorkerCrashedError,
    WorkerMemoryError,
    typed_error,
    untyped_class,
)

__all__ = [
    "Failure",
    "TaskFailure",
    "caller_error",
    "portable_exception",
    "portable_failure",
    "raised_error",
    "recorded",
    "worker_of",
]


@dataclass
class TaskFailure:
    """A task of a unit raised ``exception``. ``traceback_text`` is set when it must cross a
    process boundary; ``worker`` names the worker it failed in, when known."""

    key: str
    name: str
    exception: BaseException
    traceback_text: str | None = None
    worker: str | None = None


#: what a backend reports for a failed unit: what a task raised, or the error it decided on
Failure: TypeAlias = TaskFailure | TaskError


# -- the caller's path ------------------------------------------------------------------------


def caller_error(failure: Failure, inputs: str | None = None) -> TaskError:
    """The error that reports ``failure`` to the caller: a fact converted, a verdict as it is.
    Either names ``inputs``, the failed call in one line (see :mod:`orchestrix.graph.inputs`)."""
    if isinstance(failure, TaskError):
        return _naming_call(failure, inputs)
    return raised_error(failure, inputs)


def raised_error(failure: TaskFailure, inputs: str | None = None) -> TaskError:
    """The :class:`TaskError` of a task that raised (called as ``inputs``): ``__cause__`` is the
    exception, whose own ``__cause__`` is a :class:`RemoteTraceback` when it came from another
    process."""
    exc = failure.exception
    error = TaskError(
        failure.key,
        failure.name,
        f"task {failure.name!r} failed{_on(inputs)}: {_describe(exc)} (key {failure.key})",
    )
    if failure.traceback_text is not None and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(failure.traceback_text)
    error.__cause__ = exc
    return typed_error(error, exc)


def upstream_error(
    key: str, name: str, failure: Failure, cause: TaskError, inputs: str | None = None
) -> TaskError:
    """The error of target ``key`` that did not run because ``failure`` (whose caller's error is
    ``cause``; ``inputs``: the failed call) happened upstream of it."""
    what = _describe(_what_failed(failure))
    on = _on(inputs) if not (inputs and inputs in what) else ""  # a verdict may name it
    error = UpstreamTaskError(
        key,
        name,
        f"task {name!r} did not run: upstream task {cause.name!r} failed{on} with "
        f"{what} (key {key}, upstream key {cause.key})",
        cause.key,
        cause.name,
    )
    error.__cause__ = cause
    return _typed_like(error, cause)


def canary_error(error: TaskError, canary: int) -> TaskError:
    """The error of a failed canary run (the first ``canary`` targets); raise it from ``error``.
    It is a :class:`CanaryError`."""
    stopped = CanaryError(
        error.key,
        error.name,
        f"the canary run (the first {canary} targets) failed, so the other "
        f"targets were not scheduled: {error}",
    )
    return _typed_like(stopped, error)


def recorded(failure: Failure) -> tuple[BaseException, str | None]:
    """What the run's records show of ``failure``: the exception (a verdict is its own) and the
    traceback text it came with, if any."""
    if isinstance(failure, TaskError):
        return failure, None
    return failure.exception, failure.traceback_text


def worker_of(failure: Failure) -> str | None:
    """The worker a task failed in, where the backend knows it (a verdict names none)."""
    return failure.worker if isinstance(failure, TaskFailure) else None


def _what_failed(failure: Failure) -> BaseException:
    """The exception an upstream message names: what the task raised; for a verdict, the
    exception it reports (dask's own, as KilledWorker) or else the verdict itself."""
    if isinstance(failure, TaskFailure):
        return failure.exception
    return failure.__cause__ or failure


def _typed_like(error: TaskError, like: TaskError) -> TaskError:
    """``error``, also of the class that the task behind ``like`` raised, as ``like`` is."""
    cause = like.__cause__
    if like.raised is None or cause is None or type(cause) is not like.raised:
        return error
    return typed_error(error, cause)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _on(inputs: str | None) -> str:
    """Where a message names the failed call: ``task 'load' failed on load(i=3): ...``."""
    return f" on {inputs}" if inputs else ""


def _naming_call(error: TaskError, inputs: str | None) -> TaskError:
    """A verdict (a crash, a timeout...), its message ending with the call it stopped. Changed
    in place: a verdict is made for one unit and told once (its class and fields stay)."""
    suffix = f"; the call: {inputs}"
    if inputs and error.args and not str(error).endswith(suffix):
        error.args = (f"{error}{suffix}", *error.args[1:])
    return error


# -- crossing a process boundary --------------------------------------------------------------


def portable_failure(failure: Failure) -> Failure:
    """``failure`` made safe to pickle: see :func:`portable_exception` (a verdict pickles as
    it is, by its ``__reduce__``)."""
    if isinstance(failure, TaskFailure):
        failure.exception = portable_exception(failure.exception)
    return failure


def portable_exception(exc: BaseException, _depth: int = 0) -> BaseException:
    """``exc``, or, if it cannot cross to another process, a RuntimeError with its type's name
    and its message.

    An exception's chain crosses with it where tblib's pickling is installed (``import
    distributed`` installs it for every exception class that exists then): one unportable link
    (a ``__context__`` left by ``raise ... from None`` included) made the whole exception
    unportable, and the caller got a RuntimeError instead of our own records. So the links are
    made portable first, each on its own."""
    error = _round_trip_error(exc)
    if error is None:
        return exc
    if _depth < _MAX_CHAIN and (exc.__cause__ is not None or exc.__context__ is not None):
        if exc.__cause__ is not None:
            exc.__cause__ = portable_exception(exc.__cause__, _depth + 1)
        if exc.__suppress_context__:
            exc.__context__ = None  # not shown anyway
        elif exc.__context__ is not None:
            exc.__context__ = portable_exception(exc.__context__, _depth + 1)
        error = _round_trip_error(exc)
        if error is None:
            return exc
    kind = type(exc)
    return RuntimeError(
        f"{kind.__module__}.{kind.__qualname__}: {exc} (the exception itself could not "
        f"cross to the caller: {type(error).__name__}: {error})"
    )


_MAX_CHAIN = 20  # links of a chain made portable; deeper ones go with the RuntimeError


def _round_trip_error(exc: BaseException) -> BaseException | None:
    """Why ``exc`` cannot be pickled and rebuilt, or None if it can."""
    try:
        # Rebuilt here, not only pickled: an exception whose __init__ takes other arguments
        # than it passes to BaseException pickles fine and fails in the caller's unpickling.
        pickle.loads(pickle.dumps(exc))
    except BaseException as error:  # noqa: BLE001 - whatever makes it unportable
        return error
    return None


# -- verdicts: errors a backend decides on ----------------------------------------------------


def closed_error(key: str, name: str) -> TaskError:
    """What a task waiting or running when the orchestrator was closed fails with, every mode."""
    return TaskError(
        key, name, f"task {name!r} did not finish: the orchestrator was closed (key {key})"
    )


def crash_error(key: str, name: str, exitcode: int | None, pid: int) -> WorkerCrashedError:
    """The worker process ``pid`` running the task died on its own, with ``exitcode``."""
    message = (
        f"the worker process running task {name!r} {_how_it_ended(exitcode)} (pid {pid}, key {key})"
    )
    return WorkerCrashedError(key, name, message, exitcode)


def startup_crash_message(exitcode: int | None, pid: int, start_error: str | None) -> str:
    """Why the pool is broken: its workers die as they start (``start_error``: what the last one
    sent before it died)."""
    message = f"worker processes exit as soon as they start: worker {pid} {_how_it_ended(exitcode)}"
    if start_error:
        message += f"; its error:\n{start_error.rstrip()}"
    return message


def startup_crash_error(key: str, name: str, message: str, exitcode: int | None) -> TaskError:
    """What each task of a pool whose workers die as they start fails with (``message`` from
    :func:`startup_crash_message`)."""
    return WorkerCrashedError(key, name, message, exitcode)


def _how_it_ended(exitcode: int | None) -> str:
    """A dead worker's end in words, with a hint for the signals that have a usual cause."""
    if exitcode is None or exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        signame = signal.Signals(-exitcode).name
    except ValueError:
        signame = f"signal {-exitcode}"
    how = f"was killed by {signame}"
    if -exitcode == signal.SIGKILL:
        how += " (the kernel's out-of-memory killer may have done it: check `dmesg`)"
    elif -exitcode == signal.SIGSEGV:
        how += " (a segmentation fault, usually in compiled code)"
    return how


def broken_pool_error(key: str, name: str, why: str) -> TaskError:
    """What a task of a pool that cannot run tasks any more (``why``) fails with."""
    return TaskError(key, name, f"task {name!r} did not finish: {why} (key {key})")


def timeout_error(key: str, name: str, limit: float, *, restarted: bool = False) -> TaskError:
    """The task ran longer than ``per_job_timeout``: its worker was killed (a pool) or is being
    restarted (dask, ``restarted=True``)."""
    fate = "its worker is restarted" if restarted else "its worker was killed"
    message = f"task {name!r} ran longer than per_job_timeout={limit} s; {fate} (key {key})"
    return TaskTimeoutError(key, name, message, limit)


def memory_error(key: str, name: str, peak_rss_mb: float, limit_mb: float) -> TaskError:
    """The task made its worker go over ``max_ram_per_worker``; the worker was killed."""
    message = (
        f"task {name!r} made its worker use {peak_rss_mb:,.0f} MB, over "
        f"max_ram_per_worker={limit_mb:,} MB; the worker was killed (key {key})"
    )
    return WorkerMemoryError(key, name, message, peak_rss_mb, limit_mb)


def timeout_warning(key: str, name: str, limit: float) -> str:
    """With ``limits="warn"``: the task has run longer than ``per_job_timeout`` and goes on."""
    return (
        f"task {name!r} has run longer than per_job_timeout={limit} s; limits='warn': it keeps "
        f"running (key {key})"
    )


def memory_warning(key: str, name: str, rss_mb: float, limit_mb: float) -> str:
    """With ``limits="warn"``: the task's worker went over ``max_ram_per_worker`` and goes on."""
    return (
        f"task {name!r} made its worker use {rss_mb:,.0f} MB, over max_ram_per_worker="
        f"{limit_mb:,} MB; limits='warn': the task keeps running (key {key})"
    )


def stall_error(key: str, name: str, limit: float, *, running: bool = True) -> TaskError:
    """Nothing finished for ``task_timeout``, twice, while the task was running (a pool) or
    waited for (dask: the caller does not know whether it runs)."""
    state = "was running" if running else "was waited for"
    message = (
        f"no task finished for task_timeout={limit} s, twice, while task {name!r} {state} "
        f"(key {key})"
    )
    return StallError(key, name, message)


def no_worker_error(key: str, name: str, why: str) -> TaskError:
    """No worker job joined a cluster in time (``why`` says what the job logs show)."""
    return NoWorkerError(key, name, f"task {name!r} (key {key}) cannot run: {why}")


def killed_worker_error(key: str, name: str, retries: int, exc: BaseException) -> TaskError:
    """Dask gave the task up (``exc``, its KilledWorker) after its workers died each try."""
    message = (
        f"the workers running task {name!r} died {retries + 1} times "
        f"(retries={retries}): {exc} (key {key})"
    )
    error = WorkerCrashedError(key, name, message)
    error.__cause__ = exc
    return error


def scheduler_error(key: str, name: str, exc: BaseException) -> TaskError:
    """Dask failed the task with an error of its own (``exc``), not one the task raised."""
    error = TaskError(key, name, f"task {name!r} failed in dask: {_describe(exc)}")
    error.__cause__ = exc
    return error


def unpicklable_result_error(key: str, name: str, exc: BaseException) -> TaskError:
    """The task's result came back but could not be unpickled here (``exc``)."""
    return _result_error(key, name, "unpickled", exc)


def unreadable_result_error(key: str, name: str, exc: BaseException) -> TaskError:
    """The task's result could not be read back (``exc``: e.g. a dump file removed)."""
    return _result_error(key, name, "read", exc)


def _result_error(key: str, name: str, what: str, exc: BaseException) -> TaskError:
    message = f"the result of task {name!r} could not be {what}: {_describe(exc)} (key {key})"
    error = TaskError(key, name, message)
    error.__cause__ = exc
    return error


# -- map --------------------------------------------------------------------------------------


def map_batch_error(error: TaskError, name: str, first: int, count: int) -> TaskError:
    """A whole batch of ``map`` items ``first``... failed (it could not be sent, its worker
    died, its result could not be read): the same error, of the same class, named after the
    mapped function ``name`` as a call of it would be, and saying which items it held."""
    if error.name == name:
        return error
    args = untyped_class(error).__reduce__(error)[1]
    where = f"map items {first} to {first + count - 1}, in batch task {error.name!r}"
    renamed = untyped_class(error)(args[0], name, f"{error} ({where})", *args[3:])
    return _typed_like(renamed, error)


def map_item_error(
    error: TaskError,
    name: str,
    item: int,
    index: int,
    exc: BaseException,
    text: str,
    inputs: str | None = None,
) -> TaskError:
    """Call ``index`` (map item ``item``, the call ``inputs``) of the batch task that failed with
    ``error`` raised ``exc`` (``text``: its formatted traceback)."""
    key = f"{error.key}[{index}]"
    call = f", {inputs}" if inputs else ""
    message = (
        f"task {name!r} failed on map item {item}{call}: {_describe(exc)} "
        f"(key {key}, call {index} of batch task {error.name!r})"
    )
    item_error = TaskError(key, name, message)
    if exc.__traceback__ is None and exc.__cause__ is None:  # it came from another process
        exc.__cause__ = RemoteTraceback(text)
    item_error.__cause__ = exc
    return typed_error(item_error, exc)


# -- facts a backend finds: exceptions that stand for what kept a task from running or returning


def unimportable_task(name: str, exc: BaseException) -> RuntimeError:
    """A worker could not load the task (unpickling it raised ``exc``), in every mode with
    worker processes: most often a module that the caller imported and the workers cannot."""
    module = exc.name if isinstance(exc, ImportError) else None
    what = f"module {module!r}" if module else "its code"
    return RuntimeError(
        f"a worker could not load task {name!r}: {_describe(exc)}; {what} must be importable "
        "on the workers (install it there or put its directory on PYTHONPATH)"
    )


def preload_error(modules: list[str] | tuple[str, ...], exc: BaseException) -> str:
    """A worker could not import the ``preload`` module of ``modules`` that raised ``exc`` (a
    missing module names itself; ``modules`` are the candidates when it cannot be told)."""
    missing = exc.name if isinstance(exc, ImportError) else None
    named = [module for module in modules if module == missing] or list(modules)
    what = f"module {named[0]!r}" if len(named) == 1 else f"one of the modules {named}"
    return f"key 'preload': {what} could not be imported in a worker: {_describe(exc)}"


def forkserver_died(modules: list[str] | tuple[str, ...], exc: BaseException) -> str:
    """The forkserver died, most likely as it imported the ``preload`` ``modules`` (a module
    that ends its process: ``os._exit``, a crash in compiled code); ``exc``: what starting a
    worker then raised."""
    return (
        f"key 'preload': the forkserver died, most likely as it imported one of the modules "
        f"{list(modules)} (a module that ends its process: os._exit, a crash in compiled code); "
        f"starting a worker raised {_describe(exc)}; mp_mode='spawn' tells which module"
    )


def unsendable_task(name: str, exc: BaseException, key: str | None = None) -> pickle.PicklingError:
    """The task's function or an argument cannot be pickled (dask names the ``key`` too)."""
    where = "" if key is None else f" (key {key})"
    return pickle.PicklingError(
        f"task {name!r} could not be sent to a worker: its function or an argument "
        f"cannot be pickled: {_describe(exc)}{where}"
    )


def unreturnable_result(name: str, exc: BaseException) -> pickle.PicklingError:
    """A pool worker could not pickle the task's result to send it back."""
    return pickle.PicklingError(
        f"the result of task {name!r} could not be pickled to return it: {_describe(exc)}"
    )


def unshippable_result(key: str, name: str, exc: BaseException) -> pickle.PicklingError:
    """A dask worker could not pickle the task's result for the caller."""
    return pickle.PicklingError(
        f"the result of task {name!r} could not be pickled: {_describe(exc)} (key {key})"
    )


def unloadable_result(name: str, exc: BaseException) -> RuntimeError:
    """The caller could not unpickle a result a pool worker sent."""
    return RuntimeError(f"the result of task {name!r} could not be unpickled: {_describe(exc)}")


def unloadable_input(key: str, name: str, exc: BaseException) -> RuntimeError:
    """A dask worker could not unpickle an input of the task."""
    return RuntimeError(
        f"an input of task {name!r} could not be unpickled in the worker: {_describe(exc)} "
        f"(key {key})"
    )
