"""The ``Orchestrator``: a ``concurrent.futures.Executor`` that also runs task graphs.

It is thin: it validates the configuration, opens a session (the backend of the mode, the engine,
the monitor, the journal: :mod:`orchestrix.session`) and hands graphs to the engine. Cleanup runs
at ``close()``, at the end of a ``with`` block, and at interpreter exit (a ``weakref.finalize``,
registered per instance, never at import).
"""

from __future__ import annotations

import concurrent.futures
import dis
import functools
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any

from . import failures
from .backends import create_backend_class
from .config import Config, load_config_file
from .engine.futures import CallbackThread, CallFuture
from .engine.mapping import BatchSizer, OrderedMap, call_batch, failed_call, tasks_in_flight
from .engine.scheduler import reported_error
from .errors import ORCHESTRATOR_IN_TASK, REFUSED_AFTER_CLOSE, OrchestratorInTaskError
from .graph.factorize import WorkUnit
from .graph.inputs import describe_call
from .graph.shared import Shared
from .graph.signature import SignatureCheck
from .graph.targets import Completion, check_targets
from .graph.tasks import (
    Delayed,
    TaskFunction,
    TaskNode,
    contains_delayed,
    find_delayed,
    function_name,
    map_nested,
    warn_large_arguments,
)
from .monitoring.callbacks import TaskEvent
from .monitoring.monitor import RunSummary
from .monitoring.progress import ProgressBar, shows, start_progress
from .reports.runfiles import RunFiles
from .resolve import resolve_with_reasons
from .session import Session, describe_config
from .worker.execute import UnitOutcome

__all__ = ["Orchestrator"]

_CALL_IDS = itertools.count()


class Orchestrator(Executor):
    """Runs task graphs and plain function calls in the configured mode.

    ``Orchestrator(mode="sequential", out_dir="run")``, ``Orchestrator({"mode": ..., ...})`` (a
    CARS-style dict; keywords override it) or ``Orchestrator.from_file("conf.yaml")``.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | Config | None = None,
        /,
        *,
        client: Any = None,
        on_task_done: Callable[[TaskEvent], Any] | None = None,
        on_run_end: Callable[[RunSummary], Any] | None = None,
        **options: Any,
    ) -> None:
        for name, callback in (("on_task_done", on_task_done), ("on_run_end", on_run_end)):
            if callback is not None and not callable(callback):
                raise TypeError(f"{name} must be callable, got {type(callback).__name__}")
        self.config: Config
        self.config, self.sizing_reasons = resolve_with_reasons(config, options)
        create_backend_class(self.config)  # its imports fail (no dask) before out_dir is made
        self._closed = False
        self._lock = threading.Lock()
        self._futures: dict[Future[Any], int] = {}  # submitted calls not finished -> job id
        self._callbacks = CallbackThread()
        self._files = RunFiles(self.config.out_dir)
        with self._files.active():
            session = Session(
                self, self.config, self._files, self._callbacks, client, on_task_done, on_run_end
            )
            self._backend, self._engine, self.monitor = (
                session.backend,
                session.engine,
                session.monitor,
            )
            self._finalizer = session.close
            try:
                self._backend.start()
            except BaseException:
                self._finalizer()  # whatever started is stopped
                raise
            self._files.narrate("orchestrator started: %s", describe_config(self.config))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> Orchestrator:
        """Build from a JSON or YAML file (or a CARS configuration's ``orchestrator`` section)."""
        return cls(load_config_file(path), **overrides)

    # -- task graphs -------------------------------------------------------------------------

    def compute(
        self, targets: Any, *, timeout: float | None = None, progress: bool | None = None
    ) -> Any:
        """Compute ``targets``: a Delayed gives its value; lists, tuples and dicts holding Delayed
        give the same structure with each Delayed replaced by its value.

        ``timeout`` (seconds): if the targets are not all computed by then, raise the builtin
        :class:`TimeoutError` (the tasks still running are stopped, as on a failure).
        ``progress`` shows a progress bar (default: the ``progress`` key)."""
        check_targets(targets, "compute")
        leaves = find_delayed(targets)
        values: list[Any] = [None] * len(leaves)
        for position, value in self._run(leaves, progress, "compute", timeout):
            values[position] = value
        return _substitute(targets, iter(values))

    def as_completed(
        self,
        targets: Sequence[Any] | Mapping[Any, Any],
        *,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """Yield ``(index in targets, value)`` for each target, in completion order.

        ``targets`` is a list or tuple (or a dict: its keys are yielded instead of indices) of
        what :meth:`compute` takes: a Delayed, or a structure holding some, yielded once all of
        it is computed. ``timeout`` (seconds from this call): a target not done by then makes
        the iteration raise the builtin :class:`TimeoutError`, as
        ``concurrent.futures.as_completed`` does."""
        if type(targets) not in (list, tuple, dict):
            check_targets(targets, "as_completed")
            raise TypeError(
                f"as_completed takes a list, tuple or dict of targets, got a "
                f"{type(targets).__name__} (for one target, use compute)"
            )
        check_targets(targets, "as_completed")
        values = targets.values() if isinstance(targets, dict) else targets
        if isinstance(targets, list) and all(type(target) is Delayed for target in values):
            return self._run(targets, progress, "as_completed", timeout)  # the common case
        completion = Completion(targets)
        leaves = self._run(completion.leaves, progress, "as_completed", timeout)
        return _completed(completion, leaves)

    # -- concurrent.futures.Executor ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; return a ``concurrent.futures.Future``.

        Delayed objects among the arguments are computed first (this call then waits for them).
        Arguments that do not fit ``fn``'s signature raise TypeError here, not in the future.
        """
        _signature_check(fn).check(args, kwargs)
        warn_large_arguments(_call_name(fn), args, kwargs)
        return self._submit_call(fn, args, kwargs)[0]

    def scatter(self, value: Any, broadcast: bool = True) -> Shared:
        """Send ``value`` once to the workers (each worker with ``broadcast``); pass the handle
        in task arguments, and tasks receive ``value`` (see docs/multiprocessing.md)."""
        self._check_open()
        return self._backend.share(value, broadcast)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: ``fn`` over the items, results in input order.

        Items are read as results are taken: a bounded window of tasks is in flight, started at
        once and refilled as the results are read (leaving the loop early cancels the rest).
        Without ``chunksize``, tiny calls are batched: batches grow from one call to about
        50 ms of work, from the call times measured. ``chunksize=n`` hands exactly n items to
        each task (``chunksize=1``: a task per call). A failed call raises, at its position, a
        TaskError that names its item. ``progress`` shows a progress bar of the items done
        (default: the ``progress`` key).
        """
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be an int >= 1 or None, got {chunksize!r}")
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = self._progress_bar(progress, _shortest(iterables), "map", "item")
        name = fn.name if isinstance(fn, TaskFunction) else function_name(fn)
        if iterables:  # every call gets one argument per iterable: one check covers them all
            _signature_check(fn).check((None,) * len(iterables), {})
        if isinstance(fn, TaskFunction):  # a task mapped directly runs its function
            fn = fn.func
        plain = chunksize == 1
        nb_workers = getattr(self.config, "nb_workers", None) or 1
        window = tasks_in_flight(chunksize, self._backend.capacity(), nb_workers)

        def submit(calls: list[tuple[Any, ...]]) -> CallFuture:
            if plain:
                return self._submit_call(fn, calls[0], {}, name)[0]
            return self._submit_call(call_batch, (fn, calls), {}, f"{name}[chunk]")[0]

        def count_items(future: Future[Any], items: int) -> None:
            assert bar is not None and isinstance(future, CallFuture)
            future.add_internal_callback(functools.partial(bar.on_future, items))

        run = OrderedMap(
            submit,
            self._cancel_unless_closed,
            zip(*iterables),  # noqa: B905 - shortest iterable wins, as in Executor.map
            BatchSizer(chunksize),
            window,
            plain=plain,
            deadline=deadline,
            name=name,
            on_batch=None if bar is None else count_items,
            describe=functools.partial(describe_call, fn, name),
        )
        return self._files.iterate(run.results(None if bar is None else bar.close))

    def map_tiles(
        self,
        func: Callable[[Any], Any],
        source: Any,
        tile_shape: int | Sequence[int],
        margin: int | Sequence[int] = 0,
        out: Any = None,
        *,
        progress: bool | None = None,
    ) -> Any:
        """Run ``func`` on every tile of ``source`` and assemble the outputs in ``out``.

        ``source`` is a numpy array, a memory map or a ``.npy`` path; each task reads only its
        tile's window grown by ``margin`` (clipped at the edges), and ``func`` gets that window.
        It returns an output of the grown window's shape (its margin is cut off) or of the tile's
        (on the first axes; trailing axes are free). ``out`` is an array, an
        :class:`~orchestrix.ArraySink` (a .npy file that the workers write into: no output
        travels back) or None (an array is made from the first output). Returns ``out`` (a
        sink's file opened read-only)."""
        from .graph.tiles import plan_tiles

        plan = plan_tiles(func, source, tile_shape, margin, out)
        for position, value in self._run(plan.targets, progress, "map_tiles"):
            if plan.sink is None:
                out = plan.place(out, position, value)
        return plan.sink.open() if plan.sink is not None else out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for submitted calls to finish (unless ``wait=False``), then :meth:`close`.
        ``cancel_futures`` first cancels the calls no worker has yet (those running go on, and
        are waited for). Calls not finished at the close fail with a TaskError."""
        with self._lock:
            unfinished = list(self._futures)
        if cancel_futures:  # what no worker has yet never runs; the rest runs to its end
            self._cancel_futures(unfinished)
        if wait:
            concurrent.futures.wait(unfinished)
        self.close()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        # On an exception (Ctrl-C included) do not wait for submitted calls: stop now.
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.close()

    def close(self) -> None:
        """Stop the backend and release its resources. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def summary(self) -> RunSummary:
        """What ran so far (all of it once closed): tasks done, failed and retried; per task
        name count, mean, median and p95 time; throughput; peak memory per worker; wall time.
        It is also logged at close."""
        return self.monitor.summary()

    def report(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the run's HTML report (timeline, memory, durations, failures); return its path.

        The default path is ``out_dir/report.html`` (``report.html`` without ``out_dir``)."""
        from .reports.report import write_report

        if path is None:
            path = os.path.join(self.config.out_dir or ".", "report.html")
        facts = {"mode": self.config.mode, "nb_workers": getattr(self.config, "nb_workers", None)}
        return write_report(self.monitor.run_data(**facts), os.fspath(path))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Orchestrator mode={self.config.mode!r} {state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # What pickle would otherwise say is "cannot pickle '_thread.lock' object".
        raise OrchestratorInTaskError(ORCHESTRATOR_IN_TASK)

    def __orchestrix_token__(self) -> Any:
        # A task's argument or closure is tokenized when it is called: refused there, in every
        # mode, before the sequential mode could run what no other mode can.
        raise OrchestratorInTaskError(ORCHESTRATOR_IN_TASK)

    @property
    def dashboard_link(self) -> str | None:
        """The dask dashboard's URL (dask modes with ``activate_dashboard``), else None."""
        return getattr(self._backend, "dashboard_link", None)

    def _repr_html_(self) -> str:
        """What Jupyter shows for an orchestrator: its mode, workers and where things are."""
        from .reports.notebook import orchestrator_table

        running = 0 if self._closed else self._backend.running()
        dump_dir = getattr(self._backend, "dump_dir", None)
        return orchestrator_table(
            self.config, self._closed, self.summary(), running, dump_dir, self.dashboard_link
        )

    # -- internals ---------------------------------------------------------------------------

    def _submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None = None,
    ) -> tuple[CallFuture, int]:
        with self._files.active():
            return self._submit_in_run(fn, args, kwargs, name)

    def _submit_in_run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
    ) -> tuple[CallFuture, int]:
        self._check_open()
        _refuse_orchestrator(fn, args, kwargs)
        if contains_delayed(args) or contains_delayed(kwargs):
            args, kwargs = self.compute((args, kwargs))
        if isinstance(fn, TaskFunction):  # a task submitted directly runs its function
            name, fn = name or fn.name, fn.func
        future = CallFuture(self._callbacks)
        node = TaskNode.call(fn, name or function_name(fn), args, kwargs, f"call{next(_CALL_IDS)}")
        unit = WorkUnit((node,), ())
        if self.monitor.tracks_states:
            self.monitor.note_registered([unit])
        settle = functools.partial(self._settle, future)
        job = self._backend.submit(unit, {}, settle, future.mark_running)
        future.withdraw = functools.partial(self._backend.withdraw, job)
        with self._lock:
            self._futures[future] = job
        future.add_internal_callback(self._forget_future)
        return future, job

    def _forget_future(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.pop(future, None)

    def _cancel_futures(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the calls no worker has yet; those running go on to their outcome."""
        for future in futures:
            future.cancel()

    def _settle(self, future: CallFuture, outcome: UnitOutcome) -> None:
        if not future.mark_running():  # a backend that cannot say when a call starts
            return  # cancelled: it was withdrawn, its outcome is a close's
        failure = outcome.failure
        if failure is not None:
            inputs = failed_call(outcome.unit.tasks[0], failure)
            future.set_exception(reported_error(self.monitor, failure, inputs))
            return
        try:
            value = self._backend.materialize(outcome.value)
        except Exception as exc:  # noqa: BLE001 - e.g. a dump file removed under the run
            unit = outcome.unit
            future.set_exception(failures.unreadable_result_error(unit.key, unit.name, exc))
        else:
            future.set_result(value)

    def _cancel_unless_closed(self, futures: list[Future[Any]]) -> None:
        if not self._closed:
            self._cancel_futures(futures)

    def _run(
        self,
        targets: list[Delayed],
        progress: bool | None,
        description: str,
        timeout: float | None = None,
    ) -> Iterator[tuple[int, Any]]:
        self._check_open()
        _check_timeout(timeout)
        show = self.config.progress if progress is None else progress

        def watch(units: list[WorkUnit]) -> Any:
            bar = start_progress(show, self.monitor, units, description)
            return bar.close if bar is not None else None

        return self._files.iterate(self._engine.run(targets, watch, timeout))

    def _progress_bar(
        self, progress: bool | None, total: int | None, description: str, unit: str
    ) -> ProgressBar | None:
        if not shows(self.config.progress if progress is None else progress):
            return None
        return ProgressBar(total, description, unit)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(REFUSED_AFTER_CLOSE)


def _call_name(fn: Callable[..., Any]) -> str:
    return fn.name if isinstance(fn, TaskFunction) else function_name(fn)


def _signature_check(fn: Callable[..., Any]) -> SignatureCheck:
    if isinstance(fn, TaskFunction):
        return fn.signature_check  # read when the task was made
    return SignatureCheck(fn, function_name(fn))


def _refuse_orchestrator(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call whose function or arguments hold an Orchestrator, looking one level deep
    (the function's closure, and the globals its code names): the sequential mode would run it,
    the others could not send it (deeper ones are refused by pickle there, see ``__reduce__``).
    Submitted calls are not tokenized, which would look at every depth but hash every
    argument."""
    near = [fn, *args, *kwargs.values()]
    if isinstance(fn, functools.partial):
        near += [fn.func, *fn.args, *fn.keywords.values()]
        fn = fn.func
    near.append(getattr(fn, "__self__", None))
    code, module = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
    if code is not None and module is not None:  # ``lambda: orch.compute(...)`` in a script
        near += _globals_read(code, module)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            near.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    if any(isinstance(item, Orchestrator) for item in near):
        name = function_name(fn)
        raise OrchestratorInTaskError(f"task {name!r}: {ORCHESTRATOR_IN_TASK}")


def _globals_read(code: Any, module: dict[str, Any]) -> list[Any]:
    """The Orchestrators among the globals that ``code`` reads. ``co_names`` holds attribute
    names too (``obj.orch``): a name found there is confirmed by the instructions, which are
    read only then (the common call names no orchestrator)."""
    names = {name for name in code.co_names if isinstance(module.get(name), Orchestrator)}
    if not names:
        return []
    loads = {"LOAD_GLOBAL", "LOAD_NAME"}
    read = {i.argval for i in dis.get_instructions(code) if i.opname in loads} & names
    return [module[name] for name in read]


def _completed(
    completion: Completion, leaves: Iterator[tuple[int, Any]]
) -> Iterator[tuple[Any, Any]]:
    yield from completion.complete_now()
    for leaf, value in leaves:
        done = completion.take(leaf, value)
        if done is not None:
            yield done


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")


def _shortest(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many calls ``zip(*iterables)`` makes, when every iterable has a length."""
    try:
        return min((len(it) for it in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:
        return None


def _substitute(structure: Any, values: Iterator[Any]) -> Any:
    """Rebuild ``structure`` with its Delayed leaves replaced, in :func:`find_delayed` order."""
    return map_nested(structure, Delayed, lambda _: next(values))
