"""The ``multiprocessing`` (and ``auto``) backend: a pool of local worker processes.

One manager thread in the caller's process does all the pool's work: it sends jobs to workers in
batches (small jobs many at a time, long jobs one at a time), reads results as they come, and
waits on the workers' pipes and process sentinels together, so a worker that dies is seen at once.
The waits end early only for the deadlines it enforces: ``per_job_timeout`` (the worker running a
job too long is killed), ``task_timeout`` (the stall watchdog) and the sampling of the workers'
memory against ``max_ram_per_worker``. The caller's threads only queue jobs and receive outcomes.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from multiprocessing.connection import wait
from typing import Any

from ..errors import OrchestrixError, StallError, TaskError, TaskTimeoutError, WorkerMemoryError
from ..execute import TaskFailure, UnitOutcome
from ..factorize import WorkUnit
from ..runcontext import in_this_run
from ..transfer import create_dump_dir, dumps_work, materialize
from . import mp_pool
from .base import Backend, Sink, worker_settings
from .mp_pool import Worker, crash_error
from .mp_worker import FAILED, OK, RUN

__all__ = ["MultiprocessingBackend"]

logger = logging.getLogger("orchestrix")

#: a batch of small jobs should keep a worker busy about this long
BATCH_SECONDS = 0.02
MAX_BATCH = 512
#: below this mean job time a worker gets its next batch before it finishes the current one
PREFETCH_BELOW_SECONDS = 0.005
MEMORY_SAMPLE_SECONDS = 0.1
#: workers that die before running anything, in a row, before the pool gives up
MAX_STARTUP_FAILURES = 3


class _Job:
    __slots__ = ("attempts", "id", "inputs", "sink", "stalls", "unit")

    def __init__(self, job_id: int, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink) -> None:
        self.id = job_id
        self.unit = unit
        self.inputs = inputs  # kept until the job ends: it holds the dump files it reads
        self.sink = sink
        self.attempts = 0
        self.stalls = 0


class MultiprocessingBackend(Backend):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if not isinstance(config.nb_workers, int):
            raise OrchestrixError("nb_workers must be resolved to an int before the pool starts")
        self.nb_workers: int = config.nb_workers
        self._lock = threading.Lock()
        self._pending: deque[_Job] = deque()
        self._jobs: dict[int, _Job] = {}  # every job not yet reported
        self._ids = itertools.count()
        self._workers: list[Worker] = []
        self._mean_seconds: float | None = None
        self._last_completion = time.monotonic()
        self._next_memory_sample = 0.0
        self._startup_failures = 0
        self._closed = False
        self._wake_pending = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread: threading.Thread | None = None
        self._launcher: mp_pool.Launcher | None = None
        self.dump_dir: str | None = None

    # -- the Backend contract -----------------------------------------------------------------

    def start(self) -> None:
        if self.config.dump_to_disk:
            needed = int(self.nb_workers * self.config.max_ram_per_worker * 2**20)
            self.dump_dir = create_dump_dir(self.config.dump_dir, self.config.out_dir, needed)
        settings = worker_settings(self.config)
        self._launcher = mp_pool.Launcher(self.config.mp_mode, self.dump_dir, settings)
        for _ in range(self.nb_workers):  # one by one: if a start fails, close stops the others
            self._workers.append(self._launcher.spawn())
        self._thread = threading.Thread(
            target=in_this_run(self._manage), name="orchestrix-pool", daemon=True
        )
        self._thread.start()

    def capacity(self) -> int:
        return self.nb_workers * (2 * self._batch_size() + 1)

    def submit(self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink) -> int:
        job = _Job(next(self._ids), unit, inputs, sink)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after the orchestrator was closed")
            self._pending.append(job)
            self._jobs[job.id] = job
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            os.write(self._wake_write, b"!")
        return job.id

    def cancel(self, job_ids: Iterable[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)  # a job no longer in _jobs is skipped or ignored

    def materialize(self, value: Any) -> Any:
        return materialize(value)

    def running(self) -> int:
        return sum(len(worker.outstanding) for worker in list(self._workers))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leftover = list(self._jobs.values())
            self._jobs.clear()
        os.write(self._wake_write, b"!")
        if self._thread is not None:
            self._thread.join(timeout=10)
        mp_pool.stop_all(self._workers)
        self._workers = []
        if self._launcher is not None:
            self._launcher.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
        for job in leftover:
            message = f"task {job.unit.name!r} did not finish: the orchestrator was closed"
            self._report(job, failure=TaskError(job.unit.key, job.unit.name, message))

    # -- the manager thread -------------------------------------------------------------------

    def _manage(self) -> None:
        try:
            while not self._closed:
                self._dispatch()
                self._wait_for_events(self._seconds_to_next_deadline())
                self._enforce_deadlines()
        except BaseException as exc:
            logger.exception("orchestrix: the worker pool's manager failed")
            with self._lock:
                jobs = list(self._jobs.values())
                self._jobs.clear()
            for job in jobs:
                error = TaskError(job.unit.key, job.unit.name, f"the worker pool failed: {exc!r}")
                self._report(job, failure=error)

    def _wait_for_events(self, timeout: float | None) -> None:
        by_conn = {worker.conn: worker for worker in self._workers}
        by_sentinel = {worker.process.sentinel: worker for worker in self._workers}
        ready = wait([self._wake_read, *by_conn, *by_sentinel], timeout)
        for item in ready:
            if item == self._wake_read:
                self._drain_wake_pipe()
            elif item in by_conn:
                self._receive(by_conn[item])
        for item in ready:
            if item in by_sentinel:
                self._on_exit(by_sentinel[item])

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        # Only now: a submit after this line writes a new byte; one before it queued its job,
        # which the dispatch that follows sees. Clearing first could swallow the last wake-up.
        with self._lock:
            self._wake_pending = False

    # -- sending work -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        batch_size = self._batch_size()
        for worker in list(self._workers):
            if not self._pending:
                return
            if worker.stopping or not self._has_room(worker, batch_size):
                continue
            jobs = self._take_jobs(worker, batch_size)
            if jobs:
                self._send(worker, jobs)
            self._retire_if_due(worker)

    def _has_room(self, worker: Worker, batch_size: int) -> bool:
        if not worker.outstanding:
            return True
        small_jobs = self._mean_seconds is not None and self._mean_seconds < PREFETCH_BELOW_SECONDS
        return small_jobs and len(worker.outstanding) <= batch_size

    def _take_jobs(self, worker: Worker, batch_size: int) -> list[_Job]:
        limit = self.config.max_tasks_per_worker
        quota = math.inf if limit is None else limit - worker.done - len(worker.outstanding)
        active = sum(1 for w in self._workers if not w.stopping) or 1
        with self._lock:
            share = math.ceil(len(self._pending) / active)
            count = int(min(batch_size, share, quota))
            jobs: list[_Job] = []
            while self._pending and len(jobs) < count:
                job = self._pending.popleft()
                if job.id in self._jobs:  # else it was cancelled
                    jobs.append(job)
        return jobs

    def _send(self, worker: Worker, jobs: list[_Job]) -> None:
        payload, jobs = self._pickle_batch(jobs)
        if not jobs:
            return
        now = time.monotonic()
        if not any(w.outstanding for w in self._workers):
            self._last_completion = now  # the stall clock starts when work starts
        if not worker.outstanding:
            worker.last_progress = now
        worker.outstanding.extend(jobs)
        if self.monitor.trackers:
            self.monitor.note_started([job.unit for job in jobs], worker.name)
        message = (RUN, [job.id for job in jobs], payload)
        try:
            worker.conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the worker died: its sentinel fires next and its jobs go back to the queue

    def _pickle_batch(self, jobs: list[_Job]) -> tuple[bytes, list[_Job]]:
        """Pickle the jobs together (a function shared by many jobs is pickled once); if that
        fails, find and fail the jobs that cannot be pickled, and send the others."""
        try:
            return dumps_work([(job.unit, job.inputs) for job in jobs]), jobs
        except Exception:  # noqa: BLE001 - find the culprits one by one
            pass
        good = []
        for job in jobs:
            try:
                dumps_work((job.unit, job.inputs))
            except Exception as exc:  # noqa: BLE001 - report what could not be pickled
                self._fail_unpicklable(job, exc)
            else:
                good.append(job)
        return (dumps_work([(job.unit, job.inputs) for job in good]) if good else b""), good

    def _retire_if_due(self, worker: Worker) -> None:
        limit = self.config.max_tasks_per_worker
        if limit is not None and worker.done + len(worker.outstanding) >= limit:
            worker.stopping = "retire"  # no more jobs; it stops when it has finished its own
            if not worker.outstanding:
                worker.send_stop()
            assert self._launcher is not None
            self._workers.append(self._launcher.spawn())  # its replacement starts now

    def _batch_size(self) -> int:
        if self._mean_seconds is None:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self._mean_seconds, 1e-6))))

    # -- receiving results --------------------------------------------------------------------

    def _receive(self, worker: Worker) -> bool:
        """Read one message of results; False when there is none (the worker ended)."""
        try:
            if not worker.conn.poll():
                return False
            results, cpu, peak_rss_mb = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            return False  # it died; the sentinel handles it
        now = time.monotonic()
        worker.last_progress = self._last_completion = now
        window_wall = sum(sum(result[4]) for result in results)
        ran = []
        for job_id, status, data, started, walls, growth_mb in results:
            job = worker.outstanding.popleft()
            assert job.id == job_id, "results arrive in the order jobs were sent"
            worker.done += 1
            seconds = walls[0] if len(walls) == 1 else sum(walls)
            self._mean_seconds = (
                seconds
                if self._mean_seconds is None
                else (0.8 * self._mean_seconds + 0.2 * seconds)
            )
            if walls:
                ran.append((job.unit, started, walls, status == OK, growth_mb))
            self._deliver(job, status, data, worker.name)
        cpu_per_wall = cpu / window_wall if window_wall > 0 else 0.0
        self.monitor.record_units(worker.name, cpu_per_wall, peak_rss_mb, ran)
        if worker.stopping == "retire" and not worker.outstanding:
            worker.send_stop()
        return True

    def _deliver(self, job: _Job, status: str, data: Any, worker: str) -> None:
        unit = job.unit
        try:
            if status == OK:
                self._report(job, value=pickle.loads(data))
                return
            if status == FAILED:
                failure: TaskFailure = pickle.loads(data)
                failure.worker = worker
                self._report_failure(job, failure)
                return
            error: BaseException = RuntimeError("the worker could not load the task")
            self._report_failure(job, TaskFailure(unit.key, unit.name, error, data))
        except Exception as exc:  # noqa: BLE001 - e.g. a result whose class the caller lacks
            message = f"the result of task {unit.name!r} could not be unpickled: {exc!r}"
            self._report_failure(job, TaskFailure(unit.key, unit.name, exc, None), message)

    # -- workers that end ---------------------------------------------------------------------

    def _on_exit(self, worker: Worker) -> None:
        while self._receive(worker):  # results sent before it died are still in the pipe
            pass
        worker.reap()
        self._workers.remove(worker)
        lost, running, waiting = worker.split_outstanding()
        jobs = worker.outstanding.copy()
        worker.outstanding.clear()
        reason = worker.stopping
        with self._lock:  # jobs not at fault go back first in line, using no attempt
            self._pending.extendleft(reversed(lost + waiting))
        if running is not None:
            self._handle_interrupted(worker, running)
        if reason == "retire" or self._closed:
            return
        if reason is None and worker.done == 0 and not jobs:
            self._startup_failures += 1
            if self._startup_failures >= MAX_STARTUP_FAILURES:
                self._fail_pending(crash_error(worker, None))
                return
        else:
            self._startup_failures = 0
        assert self._launcher is not None
        self._workers.append(self._launcher.spawn())

    def _handle_interrupted(self, worker: Worker, job: _Job) -> None:
        unit = job.unit
        if worker.stopping == "timeout":
            limit = self.config.per_job_timeout
            message = (
                f"task {unit.name!r} ran longer than per_job_timeout={limit} s; its worker was "
                f"killed (key {unit.key})"
            )
            self._retry_or_fail(job, TaskTimeoutError(unit.key, unit.name, message, limit))
        elif worker.stopping == "memory":
            limit = self.config.max_ram_per_worker
            message = (
                f"task {unit.name!r} made its worker use {worker.peak_rss_mb:,.0f} MB, over "
                f"max_ram_per_worker={limit:,} MB; the worker was killed (key {unit.key})"
            )
            error = WorkerMemoryError(unit.key, unit.name, message, worker.peak_rss_mb, limit)
            self._report(job, failure=error)
        elif worker.stopping == "stall":
            if job.stalls >= 2:
                timeout = self.config.task_timeout
                message = (
                    f"no task finished for task_timeout={timeout} s, twice, while task "
                    f"{unit.name!r} was running (key {unit.key})"
                )
                self._report(job, failure=StallError(unit.key, unit.name, message))
            else:
                self.monitor.note_retry(job.unit)
                with self._lock:
                    self._pending.appendleft(job)
        else:
            self._retry_or_fail(job, crash_error(worker, job.unit))

    def _retry_or_fail(self, job: _Job, error: TaskError) -> None:
        job.attempts += 1
        if job.attempts <= self.config.retries:
            self.monitor.note_retry(job.unit)
            logger.warning(
                "orchestrix: %s; retrying (%d/%d)", error, job.attempts, self.config.retries
            )
            with self._lock:
                self._pending.appendleft(job)
        else:
            self._report(job, failure=error)

    # -- deadlines ----------------------------------------------------------------------------

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = []
        busy = [w for w in self._workers if w.outstanding and w.stopping is None]
        timeout = self.config.per_job_timeout
        if timeout is not None:
            deadlines += [w.last_progress + timeout for w in busy]
        if self.config.task_timeout is not None and (busy or self._pending):
            deadlines.append(self._last_completion + self.config.task_timeout)
        if busy:
            deadlines.append(self._next_memory_sample)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        busy = [w for w in self._workers if w.outstanding and w.stopping is None]
        timeout = self.config.per_job_timeout
        for worker in busy:
            if timeout is not None and now - worker.last_progress > timeout:
                worker.kill("timeout")
        if now >= self._next_memory_sample:
            self._next_memory_sample = now + MEMORY_SAMPLE_SECONDS
            limit = self.config.max_ram_per_worker
            for worker in busy:
                if worker.stopping is None and worker.sample_memory_mb() > limit:
                    worker.kill("memory")
        stall_limit = self.config.task_timeout
        stalled = stall_limit is not None and now - self._last_completion > stall_limit
        if stalled and (busy or self._pending):
            self._restart_stalled_pool(busy, now)

    def _restart_stalled_pool(self, busy: list[Worker], now: float) -> None:
        logger.warning(
            "orchestrix: no task finished for task_timeout=%s s; restarting the pool",
            self.config.task_timeout,
        )
        for worker in busy:
            if worker.outstanding:
                worker.outstanding[0].stalls += 1
            worker.kill("stall")
        self._last_completion = now

    # -- reporting ----------------------------------------------------------------------------

    def _fail_unpicklable(self, job: _Job, exc: Exception) -> None:
        unit = job.unit
        error = pickle.PicklingError(
            f"task {unit.name!r} could not be sent to a worker: its function or an argument "
            f"cannot be pickled: {type(exc).__name__}: {exc}"
        )
        self._report_failure(job, TaskFailure(unit.key, unit.name, error, None))

    def _fail_pending(self, error: TaskError) -> None:
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
        for job in jobs:
            self._report(job, failure=error)

    def _report_failure(self, job: _Job, failure: TaskFailure, message: str | None = None) -> None:
        if message is not None:
            failure.exception = RuntimeError(message)
        with self._lock:
            live = self._jobs.pop(job.id, None) is not None
        if live:
            job.sink(UnitOutcome(job.unit, failure=failure))

    def _report(self, job: _Job, value: Any = None, failure: TaskError | None = None) -> None:
        with self._lock:
            live = self._jobs.pop(job.id, None) is not None
        if not live:
            return  # cancelled: nobody waits for it
        if failure is None:
            job.sink(UnitOutcome(job.unit, value=value))
        else:
            cause = TaskFailure(failure.key, failure.name, failure, None, error=failure)
            job.sink(UnitOutcome(job.unit, failure=cause))
