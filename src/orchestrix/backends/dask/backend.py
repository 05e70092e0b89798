"""The ``local_dask`` backend, and the dask plumbing that the cluster modes share.

The orchestrix graph becomes one dask graph: each unit (a fused chain) is one dask task whose
dependencies are the units it reads, so dask schedules the whole graph, keeps intermediate data on
the workers and frees it when its readers are done. Only the targets' results come back.

Semantics follow the multiprocessing mode: ``per_job_timeout`` fails the task with
``TaskTimeoutError`` and restarts the worker that ran it; a worker that dies is replaced by its
nanny and its tasks rescheduled up to ``retries`` times (dask's ``allowed-failures``), then
``WorkerCrashedError``; ``task_timeout`` is the stall watchdog; ``dump_to_disk`` is dask's spilling
of worker memory to disk; a raising task is not retried. With ``limits="warn"`` a task past
``per_job_timeout`` and a worker over its memory limit are warned about and left running.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ... import failures
from ...errors import ConfigError, TaskError
from ...failures import Failure, TaskFailure, portable_failure
from ...graph.factorize import WorkUnit
from ...graph.shared import Shared, shared_id
from ...records import LabelledTask, LabelledUnit, UnitRun
from ...runcontext import in_this_run
from ...worker.execute import UnitFailed, UnitOutcome
from ...worker.transfer import dumps_work
from ..base import Backend, Recorder, Sink, Started, worker_settings
from .guard import check_main_guard
from .tasks import (
    START_TOPIC,
    TASK_TOPIC,
    WARNING_TOPIC,
    CompletionCounter,
    Label,
    MemoryLogger,
    ObserverPlugin,
    ScatteredSource,
    Shipped,
    UnitReport,
    UnitStart,
    completed_count,
    fail_unit_task,
    restart_unblamed,
    run_unit_task,
)

__all__ = ["DaskBackend"]

logger = logging.getLogger("orchestrix")


class DaskBackend(Backend):
    """Runs graphs on a dask cluster; ``client`` (an existing ``distributed.Client``) is used
    as it is and left running at close."""

    runs_graphs = True
    takes = ("client",)

    def __init__(self, config: Any, monitor: Recorder, client: Any = None) -> None:
        super().__init__(config, monitor)
        self.client: Any = client
        self.cluster: Any = None
        self._owns_client = client is None
        self._ids = itertools.count()
        self._lock = threading.Lock()
        # job id -> (future, unit, sink) that the caller waits for
        self._futures: dict[int, list[tuple[Any, WorkUnit, Sink]]] = {}
        self._starting: dict[str, Started] = {}  # unit key -> told when a worker starts it
        self._progress = threading.Event()
        self._closed = threading.Event()
        self._stalls = 0
        self._completed = -1
        # set once a worker has joined: until then nothing can finish, and that is no stall
        self._joined = threading.Event()
        self._scattered: list[Any] = []  # futures of shared values: held until close

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        import dask
        from distributed import Client

        if self.client is None:
            address = getattr(self.config, "scheduler_address", None)
            with dask.config.set(self.dask_settings()):
                if address:
                    self.client = Client(address, security=self.security())
                else:
                    self.cluster = self.make_cluster()
                    self.client = Client(self.cluster, security=self.security())
        if self.dashboard_link:
            logger.warning("orchestrix: dask dashboard at %s", self.dashboard_link)
        self.client.subscribe_topic(TASK_TOPIC, self._on_unit_event)
        self.client.subscribe_topic(START_TOPIC, self._on_start_event)
        if self.config.limits == "warn":
            self.client.subscribe_topic(WARNING_TOPIC, _log_warning)
        plugin = ObserverPlugin(worker_settings(self.config))
        self.client.register_plugin(plugin, name=ObserverPlugin.name)
        if self.config.use_memory_logger and self.config.out_dir:
            directory = os.path.join(os.path.abspath(self.config.out_dir), "memory")
            self.client.register_plugin(MemoryLogger(directory), name=MemoryLogger.name)
        self._await_workers()
        if self.config.task_timeout is not None:
            try:
                self.client.register_plugin(CompletionCounter(), name=CompletionCounter.name)
            except Exception as exc:  # noqa: BLE001 - e.g. a remote scheduler without orchestrix
                logger.warning("orchestrix: stall watchdog sees results only: %s", exc)
            threading.Thread(
                target=in_this_run(self._watch_stalls), name="orchestrix-dask-watchdog", daemon=True
            ).start()

    def _await_workers(self) -> None:
        """A LocalCluster has its workers once built; a cluster given to us is taken as ready."""
        self._joined.set()

    def make_cluster(self) -> Any:
        """A LocalCluster of ``nb_workers`` processes listening on 127.0.0.1 only."""
        from distributed import LocalCluster

        from .nanny import SpawningNanny

        check_main_guard()  # before its workers re-run the script: one line, not hundreds
        try:
            return LocalCluster(
                n_workers=self.config.nb_workers,
                threads_per_worker=self.config.threads_per_worker,
                processes=True,
                # spawn, whatever the application's dask config says (CARS's: forkserver)
                worker_class=SpawningNanny,
                host="127.0.0.1",
                # The scheduler's HTTP server (health, metrics) always runs: keep it on
                # localhost, on a free port; the dashboard pages are only served when asked for.
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": self.config.activate_dashboard},
                memory_limit=f"{self.config.max_ram_per_worker}MiB",
                # each worker process imports them as it starts (a nanny's restart too)
                preload=list(self.config.preload),
                silence_logs=logging.CRITICAL,  # orchestrix reports task errors itself
            )
        except RuntimeError as exc:  # distributed's "Nanny failed to start"
            failure = _preload_failure(self.config.preload, exc)
            if failure is None:
                raise
            raise failure from exc.__cause__

    def security(self) -> Any:
        return None  # local_dask listens on 127.0.0.1 only

    def dask_settings(self) -> dict[str, Any]:
        """dask configuration for the cluster this backend creates (read by scheduler and
        workers at their start; nothing is changed globally)."""
        spill: dict[str, Any] = {}
        if not self.config.dump_to_disk:
            spill = {
                "distributed.worker.memory.target": False,
                "distributed.worker.memory.spill": False,
            }
        return {
            "distributed.scheduler.allowed-failures": self.config.retries,
            **spill,
            **limit_settings(self.config),
        }

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL, or None when the scheduler serves none."""
        if self.client is None or not self.config.activate_dashboard:
            return None
        return str(self.client.dashboard_link)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.shares.close()
        self._scattered.clear()  # released: a cluster we do not own forgets them
        self._progress.set()
        # A compute waiting in another thread ends now, with the error every mode gives.
        self._fail_waiting(lambda unit: failures.closed_error(unit.key, unit.name))
        if self.client is not None and not self._owns_client:
            self._leave_shared_workers()
        if self._owns_client and self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def _leave_shared_workers(self) -> None:
        """Workers of a cluster we do not own outlive us: undo our plugin there now (their
        profiles are written, their log handlers removed) and stop listening."""
        try:
            self.client.unsubscribe_topic(TASK_TOPIC)
            self.client.unsubscribe_topic(START_TOPIC)
            if self.config.limits == "warn":
                self.client.unsubscribe_topic(WARNING_TOPIC)
            self.client.unregister_worker_plugin(ObserverPlugin.name)
        except Exception as exc:  # noqa: BLE001 - a scheduler already gone
            logger.warning("orchestrix: could not remove the worker plugin: %s", exc)

    # -- work ---------------------------------------------------------------------------------

    def submit_graph(self, units: list[WorkUnit], targets: list[str], sink: Sink) -> int:
        wanted = set(targets)
        graph = {unit.key: (*self._task(unit, unit.key in wanted), *unit.deps) for unit in units}
        futures = self.client.get(graph, targets, sync=False)
        by_key = {unit.key: unit for unit in units}
        return self._watch(list(zip((by_key[key] for key in targets), futures, strict=True)), sink)

    def submit(
        self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink, started: Started | None = None
    ) -> int:
        values = [inputs[dep] for dep in unit.deps]
        if started is not None:
            with self._lock:
                self._starting[unit.key] = started
        task = self._task(unit, True, announce=started is not None)
        future = self.client.submit(*task, *values, pure=False)
        return self._watch([(unit, future)], sink)

    def withdraw(self, job_id: int) -> bool:
        """Cancel a call that no worker was given yet. The scheduler decides, in one step of its
        event loop, so that it cannot hand the task over in between: once the task is
        processing, a worker has it."""
        with self._lock:
            entries = self._futures.get(job_id, [])
            if len(entries) != 1 or entries[0][1].key not in self._starting:
                return False  # finished, started, or not a call of submit
            future = entries[0][0]
        if not self.client.run_on_scheduler(_withdraw_on_scheduler, future.key, self.client.id):
            return False
        # The scheduler's answer is the truth: no worker had it, and none will. (Its cancel may
        # already have reached our callback, which then leaves the entry to this cancel.)
        self.cancel([job_id])
        return True

    def _task(self, unit: WorkUnit, ship: bool, announce: bool = False) -> tuple[Any, ...]:
        """The dask task for ``unit``, without its inputs. The unit is pickled here, by us, so
        that a function or an argument that cannot be pickled (or raises SystemExit doing so)
        fails this task, as in the other modes, instead of escaping from dask's client."""
        label = Label(unit.key, unit.name, announce)
        try:
            payload = dumps_work(unit, self.shares)
        except KeyboardInterrupt:
            raise  # the user's Ctrl-C, not the task's fault
        except BaseException as exc:  # noqa: BLE001 - whatever a __reduce__ raises
            return (fail_unit_task, _unpicklable(unit, exc))
        warn = self.config.limits == "warn"
        return (run_unit_task, label, payload, self.config.per_job_timeout, ship, warn)

    def _watch(self, pairs: list[tuple[WorkUnit, Any]], sink: Sink) -> int:
        job = next(self._ids)
        with self._lock:
            self._futures[job] = [(future, unit, sink) for unit, future in pairs]
        for unit, future in pairs:
            future.add_done_callback(functools.partial(self._settle, job, unit, sink))
        return job

    def cancel(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            entries = [entry for job in job_ids for entry in self._futures.pop(job, [])]
            for _, unit, _ in entries:
                self._starting.pop(unit.key, None)
        futures = [future for future, _, _ in entries]
        if futures and not self._closed.is_set():
            self.client.cancel(futures)

    def running(self) -> int:
        if self.client is None or self._closed.is_set():
            return 0
        return sum(len(keys) for keys in self.client.processing().values())

    def share(self, value: Any, broadcast: bool = True) -> Shared:
        """Scattered once (to every worker with ``broadcast``); tasks carry the key, in the
        unit's payload, and read the value from their worker's memory."""
        future = self.client.scatter(value, broadcast=broadcast, hash=False)
        self._scattered.append(future)
        return Shared(shared_id(value), self.shares, ScatteredSource(future.key))

    def materialize(self, value: Any) -> Any:
        result = getattr(value, "result", None)
        value = result() if callable(result) else value
        return _unshipped(value) if isinstance(value, Shipped) else value

    def _settle(self, job: int, unit: WorkUnit, sink: Sink, future: Any) -> None:
        """Called by distributed, in its callback thread, when a watched future is done."""
        self._progress.set()
        with self._lock:
            self._starting.pop(unit.key, None)  # a start not reported by now never will be
            group = self._futures.get(job)
            entry = next((e for e in group or () if e[0] is future), None)
            if group is None or entry is None or future.cancelled():
                return  # cancelled: nobody waits for it
            group.remove(entry)
            if not group:
                del self._futures[job]
        if future.status != "error":
            sink(UnitOutcome(unit, value=future))
            return
        sink(UnitOutcome(unit, failure=self._failure(unit, future.exception())))

    def _failure(self, unit: WorkUnit, exc: BaseException) -> Failure:
        if isinstance(exc, UnitFailed):
            if exc.restart_worker and not self._closed.is_set():
                self._restart_later([exc.restart_worker])
            return exc.failure
        if type(exc).__name__ == "KilledWorker":
            return failures.killed_worker_error(unit.key, unit.name, self.config.retries, exc)
        return failures.scheduler_error(unit.key, unit.name, exc)

    def _on_unit_event(self, event: tuple[float, Any]) -> None:
        """A worker ran a unit (a dask event ``(time, message)``, in the client's event loop):
        record it."""
        report = UnitReport._make(event[1])  # dask delivers the record as a plain sequence
        run = UnitRun(_labelled(report.key, report.labels), report.started, report.walls,
                      report.ok, report.growth_mb)  # fmt: skip
        self.monitor.record_units(report.worker, report.cpu_per_wall, report.peak_rss_mb, [run])
        limit = self.config.max_ram_per_worker
        peak = report.peak_rss_mb
        if self.config.limits == "warn" and peak is not None and peak > limit:
            name = report.labels[-1][1]  # the unit's name: its last task's
            _log_warning((0.0, failures.memory_warning(report.key, name, peak, limit)))

    def _on_start_event(self, event: tuple[float, Any]) -> None:
        """A worker starts a unit (a dask event, in the client's event loop)."""
        start = UnitStart._make(event[1])
        with self._lock:
            started = self._starting.pop(start.key, None)
        if started is not None:
            started()
        if self.config.out_dir is not None:  # the journal wants to know what runs
            unit = _labelled(start.key, start.labels)
            self.monitor.note_started([unit], start.worker, start.when)

    def _restart_later(self, workers: list[str]) -> None:
        """Restart workers without blocking distributed's callback thread."""
        threading.Thread(target=self._restart, args=(workers,), daemon=True).start()

    def _restart(self, workers: list[str]) -> None:
        """Restart workers on the scheduler, where their tasks are first moved off them: a
        restart we order is no crash, so it must not use up a task's retries."""
        try:
            self.client.run_on_scheduler(restart_unblamed, workers)
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a remote scheduler without orchestrix
            if self._closed.is_set():
                return
            logger.warning(
                "orchestrix: restarting %s the plain way (their tasks count it as a crash): %s",
                workers,
                exc,
            )
        try:
            self.client.restart_workers(workers, raise_for_error=False)
        except Exception as exc:  # noqa: BLE001 - a worker already gone is fine
            logger.warning("orchestrix: could not restart %s: %s", workers, exc)

    # -- the stall watchdog -------------------------------------------------------------------

    def _watch_stalls(self) -> None:
        limit = self.config.task_timeout
        while not self._closed.is_set():
            self._progress.clear()
            if self._progress.wait(limit) or self._closed.is_set():
                self._stalls = 0
                continue  # a result arrived (or we close): all is well
            with self._lock:
                waiting = bool(self._futures)
            if not waiting or not self._joined.is_set() or self._scheduler_moved():
                self._stalls = 0
                continue  # no worker yet, or intermediate tasks are finishing: not a stall
            self._stalls += 1
            if self._stalls == 1:
                logger.warning(
                    "orchestrix: nothing finished for task_timeout=%s s; restarting the workers",
                    limit,
                )
                workers = list(self.client.scheduler_info().get("workers", {}))
                self._restart_later(workers)
            else:
                self._fail_waiting(functools.partial(_stall_error, limit))

    def _scheduler_moved(self) -> bool:
        """Did any task (intermediate ones included) finish since the last look?"""
        try:
            counter = self.client.run_on_scheduler(completed_count)
        except Exception:  # noqa: BLE001 - an unreachable scheduler is no progress
            return False
        moved = counter != self._completed
        self._completed = counter
        return bool(moved)

    def _fail_waiting(self, error_for: Callable[[WorkUnit], TaskError]) -> None:
        """Fail every unit that a caller waits for with ``error_for(unit)``, and cancel it."""
        with self._lock:
            entries = [e for group in self._futures.values() for e in group]
            self._futures.clear()
        if entries:
            self.client.cancel([future for future, _, _ in entries])
        for _, unit, sink in entries:
            sink(UnitOutcome(unit, failure=error_for(unit)))


def _preload_failure(preload: tuple[str, ...], exc: BaseException) -> ConfigError | None:
    """The error of a cluster whose workers could not start because of a ``preload`` module:
    distributed's "Nanny failed to start", caused by what the worker's import raised."""
    cause = exc.__cause__
    if not preload or cause is None or "Nanny failed to start" not in str(exc):
        return None
    return ConfigError(failures.preload_error(preload, cause))


def limit_settings(config: Any) -> dict[str, Any]:
    """With ``limits="warn"`` the workers' memory limit kills nothing: dask's nanny would
    terminate a worker at 95% of it, and a worker would stop taking tasks at 80% (a task that
    keeps its memory would hold its worker paused for ever). Spilling still follows it."""
    if config.limits != "warn":
        return {}
    return {"distributed.worker.memory.terminate": False, "distributed.worker.memory.pause": False}


def _log_warning(event: tuple[float, Any]) -> None:
    """A warning of ``limits="warn"`` (a dask event ``(time, message)`` from a worker)."""
    logger.warning("orchestrix: %s", event[1])


def _stall_error(limit: float, unit: WorkUnit) -> TaskError:
    return failures.stall_error(unit.key, unit.name, limit, running=False)


def _labelled(key: str, labels: list[list[str]]) -> LabelledUnit:
    """The unit a worker reported, as the monitor reads it (see ``UnitLabels``)."""
    return LabelledUnit(key, [LabelledTask(task_key, name) for task_key, name in labels])


def _unpicklable(unit: WorkUnit, exc: BaseException) -> bytes:
    """The pickled failure of a unit that the caller could not pickle."""
    error = failures.unsendable_task(unit.name, exc, unit.key)
    text = "".join(traceback.format_exception(exc))
    return pickle.dumps(portable_failure(TaskFailure(unit.key, unit.name, error, text)))


def _unshipped(shipped: Shipped) -> Any:
    """A result as its worker pickled it, rebuilt here: a failure is that task's error."""
    try:
        return shipped.load()
    except KeyboardInterrupt:
        raise  # the user's Ctrl-C, not the result's fault
    except BaseException as exc:  # a SystemExit of a __reduce__ too
        label = shipped.label
        raise failures.unpicklable_result_error(label.key, label.name, exc) from exc


#: the states of a task on the scheduler before any worker has it
_NOT_STARTED = frozenset({"released", "waiting", "queued", "no-worker", None})


def _withdraw_on_scheduler(key: str, client: str, dask_scheduler: Any = None) -> bool:
    """Run on the scheduler: cancel task ``key`` of ``client`` unless a worker has it."""
    task = dask_scheduler.tasks.get(key)
    if task is None or task.state not in _NOT_STARTED:
        return False
    try:
        dask_scheduler.stimulus_cancel(
            [key], client, force=False, reason="withdrawn", msg="cancelled before it started"
        )
    except TypeError:  # distributed before 2024.4 takes no reason
        dask_scheduler.stimulus_cancel([key], client, force=False)
    return True
