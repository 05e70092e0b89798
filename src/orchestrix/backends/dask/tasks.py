"""What runs inside dask workers: one orchestrix unit as one dask task, and the memory logger.

Kept apart from the backend so that a worker imports only this, ``orchestrix.worker`` and
``orchestrix.failures``.
"""

from __future__ import annotations

import contextvars
import os
import pickle
import threading
import time
import traceback
from typing import Any, NamedTuple

from distributed import SchedulerPlugin, WorkerPlugin
from distributed.protocol import dask_deserialize, dask_serialize

from ... import failures
from ...failures import TaskFailure, portable_failure
from ...graph.factorize import WorkUnit
from ...worker.execute import TaskCaller, UnitFailed, UnitOutcome
from ...worker.observe import ProcessObserver, UsageMeter, WorkerSettings, run_measured

__all__ = [
    "START_TOPIC",
    "TASK_TOPIC",
    "CompletionCounter",
    "Label",
    "MemoryLogger",
    "ObserverPlugin",
    "ScatteredSource",
    "Shipped",
    "UnitReport",
    "UnitStart",
    "WARNING_TOPIC",
    "completed_count",
    "fail_unit_task",
    "restart_unblamed",
    "run_unit_task",
]

#: the dask event topic on which workers report each unit they ran (timing, memory)
TASK_TOPIC = "orchestrix-unit"
#: the topic on which workers report each unit they start (for the journal, with out_dir only)
START_TOPIC = "orchestrix-start"
#: the topic on which workers post the warnings of ``limits="warn"`` (a message each)
WARNING_TOPIC = "orchestrix-warning"
_observer: ProcessObserver | None = None  # this worker process's, set up by ObserverPlugin
_meters = threading.local()


class Label:
    """The key and name of a unit, opaque to dask (a bare key string in a task's arguments would
    be taken for a dependency). ``announce``: the worker posts the unit's start even without a
    journal (the future of a ``submit`` must know when it runs)."""

    __slots__ = ("announce", "key", "name")

    def __init__(self, key: str, name: str, announce: bool = False) -> None:
        self.key, self.name, self.announce = key, name, announce

    def __reduce__(self) -> tuple[Any, ...]:
        return (Label, (self.key, self.name, self.announce))


class UnitStart(NamedTuple):
    """A worker starts a unit (posted on ``START_TOPIC``). dask's messages carry it as a plain
    sequence: the caller rebuilds it with ``UnitStart._make``."""

    key: str
    #: ``[key, name]`` of each task of the unit, in order
    labels: list[list[str]]
    worker: str
    #: epoch seconds
    when: float


class UnitReport(NamedTuple):
    """A worker ran a unit (posted on ``TASK_TOPIC``); rebuilt with ``UnitReport._make``."""

    key: str
    #: ``[key, name]`` of each task of the unit, in order
    labels: list[list[str]]
    worker: str
    #: when its first task began, epoch seconds
    started: float
    #: the wall seconds of each task that ran; the last one failed unless ``ok``
    walls: list[float]
    #: CPU seconds per wall second over the unit
    cpu_per_wall: float
    peak_rss_mb: float | None
    ok: bool
    #: private memory growth (MB) per task, in loop testing only
    growth_mb: list[float] | None


class Shipped:
    """A unit's result as its worker pickled it (protocol 5, large buffers out of band).

    A worker pickles a result that leaves it itself, so that a result that cannot be pickled
    (or that kills the worker while pickled) is that task's failure, not an error of dask's
    transfer; and dask only ever unpickles these bytes, so that a result that cannot be rebuilt
    fails in :meth:`load`, in orchestrix's hands, never in distributed's event loop (where a
    SystemExit would stop the client's IO loop for every later call)."""

    __slots__ = ("buffers", "data", "label")

    def __init__(self, label: Label, data: bytes, buffers: list[Any]) -> None:
        self.label, self.data, self.buffers = label, data, buffers

    def __reduce__(self) -> tuple[Any, ...]:
        # dask uses the frames below; a plain pickle (any protocol) copies the buffers
        return (Shipped, (self.label, self.data, [bytes(memoryview(b)) for b in self.buffers]))

    @classmethod
    def pack(cls, label: Label, value: Any) -> Shipped:
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        return cls(label, data, buffers)

    def load(self) -> Any:
        return pickle.loads(self.data, buffers=self.buffers)


class ScatteredSource:
    """Where a shared value lies on a dask cluster: under ``key`` in the workers' memory (it was
    scattered there). A worker that lacks it (one that joined later) fetches it once."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def load(self) -> Any:
        from distributed import get_worker
        from distributed.utils import sync
        from distributed.utils_comm import gather_from_workers

        worker = get_worker()
        try:
            return worker.data[self.key]
        except KeyError:
            pass
        # From the workers that hold it, as dask moves a task's dependencies (a gather through
        # a client inside a task waits for ever: distributed 2026.8)
        holders = sync(worker.loop, worker.scheduler.who_has, keys=[self.key])
        data = sync(worker.loop, gather_from_workers, holders, rpc=worker.rpc)[0]
        if self.key not in data:
            raise LookupError(f"no worker holds the shared value {self.key!r} any more")
        return data[self.key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScatteredSource, (self.key,))


@dask_serialize.register(Shipped)
def _shipped_frames(shipped: Shipped) -> tuple[dict[str, Any], list[Any]]:
    """dask's transfer of a result: its pickle and its buffers as frames, uncopied."""
    header = {"key": shipped.label.key, "name": shipped.label.name}
    return header, [shipped.data, *(memoryview(b) for b in shipped.buffers)]


@dask_deserialize.register(Shipped)
def _shipped_from_frames(header: dict[str, Any], frames: list[Any]) -> Shipped:
    return Shipped(Label(header["key"], header["name"]), frames[0], list(frames[1:]))


def fail_unit_task(failure: bytes, *values: Any) -> Any:
    """A dask task that stands for a unit the caller could not pickle: it fails with the
    (pickled) failure, so that dask does not run its dependents."""
    raise UnitFailed(pickle.loads(failure))


def run_unit_task(
    label: Label, payload: bytes, timeout: float | None, ship: bool, warn: bool, *values: Any
) -> Any:
    """A dask task: run the pickled unit with its dependencies' values (in ``unit.deps`` order).

    The unit travels pickled so that a worker that cannot load it (a module missing on the
    cluster) fails this task with a clear error, instead of losing its connection to the
    scheduler while decoding the message. A failing task raises :class:`UnitFailed`, so that
    dask does not run its dependents and the caller learns which task failed first. With
    ``ship`` (a result the caller will read) the result leaves :class:`Shipped`. With ``warn``
    (``limits="warn"``) a unit past ``timeout`` is warned about and runs to its end.
    """
    try:
        unit: WorkUnit = pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001 - typically a module the workers cannot import
        error = failures.unimportable_task(label.name, exc)
        raise UnitFailed(
            TaskFailure(label.key, label.name, error, traceback.format_exc())
        ) from None
    inputs = dict(zip(unit.deps, _unshipped(label, values), strict=True))
    journal = _observer is not None and _observer.settings.out_dir is not None
    if label.announce or journal:
        worker = _observer.name if _observer is not None else ""
        _post(START_TOPIC, UnitStart(unit.key, _labels(unit), worker, time.time()))
    if timeout is None:
        outcome = _run_measured(unit, inputs)
    else:
        outcome = _run_with_timeout(unit, inputs, timeout, warn)
    if outcome.walls:
        _report_unit(unit, outcome)
    if outcome.failure is not None:
        # A verdict here is a timeout: the thread still runs, only a restart stops it.
        restart = None if isinstance(outcome.failure, TaskFailure) else _worker_address()
        raise UnitFailed(portable_failure(outcome.failure), restart)
    return _shipped(label, outcome.value) if ship else outcome.value


def _shipped(label: Label, value: Any) -> Any:
    try:
        return Shipped.pack(label, value)
    except BaseException as exc:  # noqa: BLE001 - a SystemExit of a __reduce__ too
        error = failures.unshippable_result(label.key, label.name, exc)
        failure = TaskFailure(label.key, label.name, error, traceback.format_exc())
        raise UnitFailed(portable_failure(failure)) from None


def _unshipped(label: Label, values: tuple[Any, ...]) -> list[Any]:
    """The dependencies' values, rebuilt from those that came :class:`Shipped`."""
    try:
        return [value.load() if isinstance(value, Shipped) else value for value in values]
    except BaseException as exc:  # noqa: BLE001 - a SystemExit of a __reduce__ too
        error = failures.unloadable_input(label.key, label.name, exc)
        failure = TaskFailure(label.key, label.name, error, traceback.format_exc())
        raise UnitFailed(portable_failure(failure)) from None


def _run_with_timeout(
    unit: WorkUnit, inputs: dict[str, Any], timeout: float, warn: bool = False
) -> UnitOutcome:
    """Run the unit in a thread and stop waiting after ``timeout``; the caller then restarts this
    worker, which is the only way to stop a Python thread that is still running. With ``warn``,
    tell the caller once and wait for the unit's end instead."""
    box: list[UnitOutcome] = []
    # in this context: distributed finds the task's worker (get_worker, get_client) through it
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(_run_into, box, unit, inputs), daemon=True)
    thread.start()
    thread.join(timeout)
    if not box and warn:
        _post(WARNING_TOPIC, failures.timeout_warning(unit.key, unit.name, timeout))
        thread.join()
    if box:  # _run_into gives an outcome whatever happens: none means still running
        return box[0]
    error = failures.timeout_error(unit.key, unit.name, timeout, restarted=True)
    return UnitOutcome(unit, failure=error)


def _run_into(box: list[UnitOutcome], unit: WorkUnit, inputs: dict[str, Any]) -> None:
    """The timeout thread's body: whatever escapes the run (run_unit keeps the task's own
    exceptions) still gives an outcome, so that it is not mistaken for a timeout."""
    try:
        box.append(_run_measured(unit, inputs))
    except BaseException as exc:  # noqa: BLE001 - reported as this unit's failure
        text = "".join(traceback.format_exception(exc))
        box.append(UnitOutcome(unit, failure=TaskFailure(unit.key, unit.name, exc, text)))


def _run_measured(unit: WorkUnit, inputs: dict[str, Any]) -> UnitOutcome:
    """Run the unit, measuring its CPU time and peak memory (kept in ``outcome.usage``)."""
    meter = getattr(_meters, "meter", None)
    if meter is None:
        meter = _meters.meter = UsageMeter()  # per thread: its CPU clock is the thread's
    observer = _observer
    caller: TaskCaller | None = observer if observer is not None and observer.wraps_calls else None
    return run_measured(unit, inputs, meter, caller, remote=True)


def _report_unit(unit: WorkUnit, outcome: UnitOutcome) -> None:
    """Tell the client that this unit ran (a dask event): its timing and memory."""
    event = UnitReport(
        key=unit.key,
        labels=_labels(unit),
        worker=_observer.name if _observer is not None else "",
        started=outcome.started,
        walls=outcome.walls,
        cpu_per_wall=outcome.cpu_per_wall(),
        peak_rss_mb=outcome.usage.peak_rss_mb if outcome.usage is not None else None,
        ok=outcome.failure is None,
        growth_mb=outcome.growth_mb,
    )
    _post(TASK_TOPIC, event)


def _labels(unit: WorkUnit) -> list[list[str]]:
    return [[node.key, node.name] for node in unit.tasks]


def _post(topic: str, event: UnitStart | UnitReport | str) -> None:
    try:
        from distributed import get_worker

        get_worker().log_event(topic, event)
    except ValueError:
        pass  # not in a worker (a test calling the task function directly)


class ObserverPlugin(WorkerPlugin):
    """A dask worker plugin: sets up the worker process's logs and profilers (once per process,
    undone when the worker closes: profiles are written then)."""

    name = "orchestrix-observer"

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__()
        self.settings = settings

    def setup(self, worker: Any) -> None:
        global _observer
        if _observer is None:
            _observer = ProcessObserver(self.settings)
            _observer.start()

    def teardown(self, worker: Any) -> None:
        global _observer
        if _observer is not None:
            _observer.stop()
            _observer = None


def _worker_address() -> str | None:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


class MemoryLogger(WorkerPlugin):
    """A dask worker plugin: samples the worker's resident memory once a second into
    ``directory/worker-<name>.csv`` (``time,rss_mb``)."""

    name = "orchestrix-memory-logger"

    def __init__(self, directory: str, period: float = 1.0) -> None:
        super().__init__()
        self.directory = directory
        self.period = period
        self._stop: threading.Event | None = None  # made in the worker: an Event cannot travel

    def setup(self, worker: Any) -> None:
        self._stop = threading.Event()
        os.makedirs(self.directory, exist_ok=True)
        safe = str(worker.name).replace("/", "_").replace(":", "_")
        path = os.path.join(self.directory, f"worker-{safe}.csv")
        threading.Thread(target=self._sample, args=(path,), daemon=True).start()

    def teardown(self, worker: Any) -> None:
        if self._stop is not None:
            self._stop.set()

    def _sample(self, path: str) -> None:
        import psutil

        process = psutil.Process()
        with open(path, "a", encoding="utf-8") as stream:
            stream.write("time,rss_mb\n")
            while self._stop is not None and not self._stop.wait(
                self.period
            ):  # an Event wait: ends at once on teardown
                rss = process.memory_info().rss / 2**20
                stream.write(f"{time.time():.3f},{rss:.1f}\n")
                stream.flush()


class CompletionCounter(SchedulerPlugin):
    """A scheduler plugin: counts tasks that finished (processing -> memory), for the stall
    watchdog. Restarts and reschedulings also change task states; they are not progress."""

    name = "orchestrix-completions"

    def __init__(self) -> None:
        self.count = 0

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory":
            self.count += 1


def completed_count(dask_scheduler: Any) -> int:
    """Run on the scheduler: tasks finished so far (-1 without the plugin)."""
    plugin = dask_scheduler.plugins.get(CompletionCounter.name)
    return plugin.count if plugin is not None else -1


async def restart_unblamed(workers: list[str], *, dask_scheduler: Any) -> dict[str, str]:
    """Run on the scheduler: restart these workers (their nannies start fresh processes)
    without counting the tasks they hold as victims of a crash.

    dask's own ``restart_workers`` kills the process, and the scheduler then counts every task
    still processing there against ``allowed-failures``, as if the worker had crashed. Those
    tasks are innocent: the next run's task that landed on a worker restarted after a
    per_job_timeout, a task queued behind the one that timed out. So first the worker gets no
    new work, then its tasks go back to waiting (and run elsewhere or on the fresh worker),
    and only then is it killed: nothing is left on it to blame.
    """
    stimulus_id = f"orchestrix-restart-{time.time()}"
    known = [dask_scheduler.workers[a] for a in workers if a in dask_scheduler.workers]
    for state in known:
        # not "running" for the scheduler: nothing new is assigned to it from now on
        dask_scheduler.handle_worker_status_change("closing_gracefully", state, stimulus_id)
        released = {task.key: "released" for task in state.processing}
        dask_scheduler.transitions(released, stimulus_id)
    addresses = [state.address for state in known]
    if not addresses:
        return {}
    result: dict[str, str] = await dask_scheduler.restart_workers(
        addresses, stimulus_id=stimulus_id, on_error="return", wait_for_workers=False
    )
    return result
