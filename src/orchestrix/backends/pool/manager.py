"""The ``multiprocessing`` (and ``auto``) backend: a pool of local worker processes.

One manager thread in the caller's process does all the pool's work: it starts the workers, sends
them jobs in batches, reads results as they come, and waits on the workers' sockets and exit
handles together, so a worker that dies is seen at once. It never blocks on a worker: its socket
ends are non-blocking (see :mod:`.protocol`). The waits end early only for the deadlines it
enforces (:mod:`.deadlines`): ``per_job_timeout`` (the worker running a job too long is killed, or
with ``limits="warn"`` warned about), ``task_timeout`` (the stall watchdog) and the sampling of the
workers' memory against ``max_ram_per_worker``. The caller's threads only queue jobs and receive
outcomes.

Every job not yet reported is in one ledger (:mod:`.ledger`), which reports each exactly once
whichever way it ends; the rules that get tuned (batch sizes, retry or fail per cause, when to
give up on workers that cannot start) are pure functions in :mod:`.policy`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import pickle
import select
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ... import failures
from ...errors import ConfigError, OrchestrixError, TaskError
from ...failures import TaskFailure
from ...graph.factorize import WorkUnit
from ...graph.shared import Shared
from ...records import UnitRun
from ...runcontext import in_this_run
from ...worker.dumps import materialize, share_in_file
from ...worker.execute import UnitOutcome
from ...worker.transfer import create_dump_dir
from ..base import Backend, Recorder, Sink, Started, worker_settings
from . import policy, processes, protocol
from .deadlines import Deadlines
from .ledger import Job, Ledger
from .policy import MAX_STARTUP_FAILURES, Cause, Verdict
from .processes import StopReason, Worker, interruption_error
from .protocol import JobResult, JobStatus, ResultWindow, RunBatch, StartFailed, pickle_work

__all__ = ["MultiprocessingBackend"]

logger = logging.getLogger("orchestrix")

#: how long to wait before trying again to start a worker that could not be started
RESPAWN_DELAY_SECONDS = 0.2
#: how long ``close`` waits for the manager to stop the workers (it needs about 2 s at most)
CLOSE_JOIN_SECONDS = 15.0

_IN, _OUT = select.POLLIN, select.POLLOUT


class _Handle(enum.Enum):
    """What a file descriptor the manager polls is."""

    #: a worker's socket: results (or its start failure) arrive, queued batches drain
    CHANNEL = "channel"
    #: a worker process's exit handle: it becomes readable when the process ends
    EXIT = "exit"
    #: the read end of the wake-up pipe: a job was added, or the pool closes
    WAKE = "wake"


_CHANNEL, _EXIT, _WAKE = _Handle.CHANNEL, _Handle.EXIT, _Handle.WAKE
_new = tuple.__new__  # a record per unit at half the cost of its class (see .records)


class MultiprocessingBackend(Backend):
    def __init__(self, config: Any, monitor: Recorder) -> None:
        super().__init__(config, monitor)
        if not isinstance(config.nb_workers, int):
            raise OrchestrixError("nb_workers must be resolved to an int before the pool starts")
        self.nb_workers: int = config.nb_workers
        self._ledger = Ledger()
        self._ids = itertools.count()
        self._workers: list[Worker] = []
        self._poll = select.poll()
        self._handles: dict[int, tuple[_Handle, Worker | None]] = {}
        self._mean_seconds: float | None = None
        self._deadlines = Deadlines(config)
        self._startup = policy.StartupWatch(MAX_STARTUP_FAILURES)
        self._respawns: list[float] = []  # when to try again to start workers that could not
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._preloaded = threading.Event()  # a first worker imported the preload modules, or not
        self._preload_failure: str | None = None
        self._launcher: processes.Launcher | None = None
        self.dump_dir: str | None = None

    # -- the Backend contract -----------------------------------------------------------------

    def start(self) -> None:
        if self.config.dump_to_disk:
            needed = int(self.nb_workers * self.config.max_ram_per_worker * 2**20)
            self.dump_dir = create_dump_dir(self.config.dump_dir, self.config.out_dir, needed)
        settings = worker_settings(self.config)
        self._launcher = processes.Launcher(
            self.config.mp_mode, self.dump_dir, settings, self.config.preload
        )
        self._register(self._wake_read, _WAKE, None)
        # The manager thread starts the workers: each dies with the thread that started it (the
        # parent-death signal), so that must be a thread that lives as long as the pool.
        self._thread = threading.Thread(
            target=in_this_run(self._manage), name="orchestrix-pool", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        if self.config.preload:
            self._preloaded.wait()  # a module that cannot be imported fails the start, here
            broken = self._ledger.broken  # or one that kills its worker as it loads
            if broken is not None:
                raise (ConfigError if self._preload_failure else OrchestrixError)(broken)

    def capacity(self) -> int:
        return self.nb_workers * (2 * self._batch_size() + 1)

    def submit(
        self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink, started: Started | None = None
    ) -> int:
        job = Job(next(self._ids), unit, inputs, sink, started)
        if self._ledger.add(job):
            os.write(self._wake_write, b"!")
        return job.id

    def cancel(self, job_ids: Iterable[int]) -> None:
        self._ledger.cancel(job_ids)

    def withdraw(self, job_id: int) -> bool:
        return self._ledger.withdraw(job_id)

    def materialize(self, value: Any) -> Any:
        return materialize(value)

    def share(self, value: Any, broadcast: bool = True) -> Shared:
        return share_in_file(value, self.dump_dir, self.shares)  # a file all workers map

    def running(self) -> int:
        return sum(len(worker.outstanding) for worker in list(self._workers))

    def close(self) -> None:
        self.shares.close()
        if not self._ledger.close():
            return
        os.write(self._wake_write, b"!")
        thread = self._thread
        manager_ended = thread is None or thread is threading.current_thread()
        if not manager_ended:
            assert thread is not None
            thread.join(timeout=CLOSE_JOIN_SECONDS)
            manager_ended = not thread.is_alive()
        if not manager_ended:
            logger.error("orchestrix: the worker pool's manager did not stop; killing its workers")
            for worker in list(self._workers):
                worker.kill(StopReason.CLOSE)
        self._ledger.settle_all(lambda unit: failures.closed_error(unit.key, unit.name))
        if manager_ended and thread is not threading.current_thread():
            self._release()

    def _release(self) -> None:
        """What the pool holds beyond its workers: the forkserver, the wake-up pipe, dumps."""
        if self._launcher is not None:
            self._launcher.close()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)

    # -- the manager thread -------------------------------------------------------------------

    def _manage(self) -> None:
        try:
            for _ in range(self.nb_workers):
                self._add_worker(self._launcher_or_fail().spawn())
        except BaseException as exc:  # noqa: BLE001 - start() raises it in the caller
            self._start_error = exc
        self._started.set()
        ledger = self._ledger
        try:
            while self._start_error is None and not ledger.closed and ledger.broken is None:
                self._respawn_due()
                self._dispatch()
                self._wait_for_events(self._seconds_to_next_deadline())
                self._enforce_deadlines()
        except BaseException as exc:
            logger.exception("orchestrix: the worker pool's manager failed")
            message = f"the worker pool's manager failed: {type(exc).__name__}: {exc}"
            self._ledger.break_down(message, _failing_with(message))
        finally:
            self._preloaded.set()  # the start waits no more: the pool is broken or closing
            processes.stop_all(self._workers)  # in this thread: see above
            self._workers = []

    def _launcher_or_fail(self) -> processes.Launcher:
        if self._launcher is None:
            raise OrchestrixError("the worker pool was not started")
        return self._launcher

    def _add_worker(self, worker: Worker) -> None:
        self._workers.append(worker)
        self._register(worker.channel.fileno(), _CHANNEL, worker)
        self._register(worker.exit_handle, _EXIT, worker)

    def _spawn_replacement(self) -> None:
        """Start a worker; one that cannot be started (out of processes, a forkserver that just
        died) is tried again shortly, and counts as a worker that could not start."""
        try:
            worker = self._launcher_or_fail().spawn()
        except Exception as exc:  # noqa: BLE001 - e.g. out of processes or descriptors
            message = f"a worker process could not be started: {type(exc).__name__}: {exc}"
            if self._startup.worker_ended(ran_anything=False, stopped_by_pool=False):
                self._ledger.break_down(message, _failing_with(message))
                return
            logger.warning("orchestrix: %s; trying again", message)
            self._respawns.append(time.monotonic() + RESPAWN_DELAY_SECONDS)
            return
        self._add_worker(worker)

    def _respawn_due(self) -> None:
        now = time.monotonic()
        due = [when for when in self._respawns if when <= now]
        self._respawns = [when for when in self._respawns if when > now]
        for _ in due:
            self._spawn_replacement()

    def _register(self, fd: int, kind: _Handle, worker: Worker | None) -> None:
        self._poll.register(fd, _IN)
        self._handles[fd] = (kind, worker)

    def _unregister(self, fd: int) -> None:
        if self._handles.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def _wait_for_events(self, timeout: float | None) -> None:
        milliseconds = None if timeout is None else math.ceil(timeout * 1000)
        exited = []
        for fd, events in self._poll.poll(milliseconds):
            kind, worker = self._handles.get(fd, (None, None))
            if kind is _WAKE:
                self._drain_wake_pipe()
            elif kind is _CHANNEL and worker is not None:
                self._on_channel(worker, events)
            elif kind is _EXIT and worker is not None:
                exited.append(worker)
        for worker in exited:
            self._on_exit(worker)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        # Only now: a submit after this line writes a new byte; one before it queued its job,
        # which the dispatch that follows sees. Clearing first could swallow the last wake-up.
        self._ledger.woken()

    def _on_channel(self, worker: Worker, events: int) -> None:
        channel = worker.channel
        if events & _OUT:
            channel.flush()
        self._read(worker)
        if channel.eof:
            # It closed its end: it is ending (its exit handle fires next), or it is broken.
            self._unregister(channel.fileno())
        else:
            self._watch_output(worker)

    def _watch_output(self, worker: Worker) -> None:
        fd = worker.channel.fileno()
        if fd in self._handles:
            self._poll.modify(fd, _IN | _OUT if worker.channel.sending else _IN)

    def _read(self, worker: Worker) -> None:
        for message in worker.channel.receive():
            if isinstance(message, ResultWindow):
                self._receive(worker, message)
            elif isinstance(message, StartFailed):
                worker.start_error = message.traceback_text
            elif isinstance(message, protocol.Preloaded):
                self._on_preloaded(worker, message.failure)
            else:
                raise OrchestrixError(f"unexpected message from worker {worker.pid}: {message!r}")

    def _on_preloaded(self, worker: Worker, failure: str | None) -> None:
        """A worker imported the preload modules, or could not: the pool cannot run its tasks
        then, and says why at once rather than start worker after worker."""
        worker.ready = failure is None
        if failure is not None and self._ledger.broken is None:
            self._preload_failure = failure
            self._ledger.break_down(failure, _failing_with(failure))
        self._preloaded.set()

    # -- sending work -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        batch_size = self._batch_size()
        # A retiring worker runs its last jobs while its replacement starts: the replacement
        # waits for them, so that no more than nb_workers processes run jobs (and use memory).
        running = sum(1 for w in self._workers if w.outstanding)
        for worker in list(self._workers):
            if not self._ledger.pending:
                return
            if worker.stopping or not worker.ready or not self._has_room(worker, batch_size):
                continue
            if not worker.outstanding and running >= self.nb_workers:
                continue
            jobs = self._take_jobs(worker, batch_size)
            if jobs:
                running += not worker.outstanding
                self._send(worker, jobs)
            self._retire_if_due(worker)

    def _has_room(self, worker: Worker, batch_size: int) -> bool:
        return policy.may_prefetch(len(worker.outstanding), batch_size, self._mean_seconds)

    def _take_jobs(self, worker: Worker, batch_size: int) -> list[Job]:
        limit = self.config.max_tasks_per_worker
        quota = math.inf if limit is None else limit - worker.done - len(worker.outstanding)
        active = sum(1 for w in self._workers if not w.stopping)
        count = policy.jobs_to_take(batch_size, len(self._ledger.pending), active, quota)
        return self._ledger.take(count)

    def _send(self, worker: Worker, jobs: list[Job]) -> None:
        payload, jobs = self._pickle_batch(jobs)
        if not jobs:
            return
        now = time.monotonic()
        if not any(w.outstanding for w in self._workers):
            self._deadlines.last_completion = now  # the stall clock starts when work starts
        if not worker.outstanding:
            worker.last_progress = now
        worker.outstanding.extend(jobs)
        if self.monitor.tracks_states:
            self.monitor.note_started([job.unit for job in jobs], worker.name)
        worker.channel.send(RunBatch([job.id for job in jobs], payload))
        self._watch_output(worker)

    def _pickle_batch(self, jobs: list[Job]) -> tuple[bytes, list[Job]]:
        """Pickle the jobs together (a function shared by many jobs is pickled once); if that
        fails, find and fail the jobs that cannot be pickled, and send the others."""
        try:
            return pickle_work(jobs, self.shares), jobs
        except BaseException:  # noqa: BLE001 - a hostile __reduce__ may raise anything
            pass
        good = []
        for job in jobs:
            try:
                pickle_work([job], self.shares)
            except BaseException as exc:  # noqa: BLE001 - report what could not be pickled
                self._fail_unpicklable(job, exc)
            else:
                good.append(job)
        return (pickle_work(good, self.shares) if good else b""), good

    def _retire_if_due(self, worker: Worker) -> None:
        limit = self.config.max_tasks_per_worker
        if limit is not None and worker.done + len(worker.outstanding) >= limit:
            worker.stopping = StopReason.RETIRE  # no more jobs; it stops once its own are done
            worker.replaced = True
            if not worker.outstanding:
                worker.send_stop()
                self._watch_output(worker)
            self._spawn_replacement()  # its replacement starts now

    def _batch_size(self) -> int:
        return policy.batch_size(self._mean_seconds)

    # -- receiving results --------------------------------------------------------------------

    def _receive(self, worker: Worker, window: ResultWindow) -> None:
        now = time.monotonic()
        worker.last_progress = self._deadlines.last_completion = now
        results = window.results
        window_wall = sum(sum(result.walls) for result in results)
        ran: list[UnitRun] = []
        for result in results:
            job = worker.outstanding.popleft()
            if job.id != result.job_id:
                raise OrchestrixError("results arrive in the order jobs were sent")
            worker.done += 1
            walls = result.walls
            seconds = walls[0] if len(walls) == 1 else sum(walls)
            self._mean_seconds = policy.running_mean(self._mean_seconds, seconds)
            if walls:
                ok = result.status is JobStatus.OK
                ran.append(_new(UnitRun, (job.unit, result.started, walls, ok, result.growth_mb)))
            self._deliver(job, result, worker.name)
        cpu_per_wall = window.cpu_seconds / window_wall if window_wall > 0 else 0.0
        self.monitor.record_units(worker.name, cpu_per_wall, window.peak_rss_mb, ran)
        if worker.stopping is StopReason.RETIRE and not worker.outstanding:
            worker.send_stop()
            self._watch_output(worker)

    def _deliver(self, job: Job, result: JobResult, worker: str) -> None:
        unit = job.unit
        try:
            if result.status is JobStatus.OK:
                self._settle(job, UnitOutcome(unit, value=pickle.loads(result.data)))
                return
            if result.status is JobStatus.FAILED:
                failure: TaskFailure = pickle.loads(result.data)
                failure.worker = worker
                self._settle(job, UnitOutcome(unit, failure=failure))
                return
            unloadable = pickle.loads(result.data)  # a protocol.Unloadable
            self._settle_failure(job, unloadable.failure(unit.key, unit.name))
        except BaseException as exc:  # noqa: BLE001 - e.g. a result whose class the caller lacks
            error = failures.unloadable_result(unit.name, exc)
            error.__cause__ = exc
            self._settle_failure(job, TaskFailure(unit.key, unit.name, error, None, worker=worker))

    # -- workers that end ---------------------------------------------------------------------

    def _on_exit(self, worker: Worker) -> None:
        self._read(worker)  # results sent before it died are still in the socket
        self._unregister(worker.channel.fileno())
        self._unregister(worker.exit_handle)
        worker.reap()
        self._workers.remove(worker)
        lost, running, waiting = worker.split_outstanding()
        worker.outstanding.clear()
        reason = worker.stopping
        self._ledger.requeue(lost + waiting)  # not at fault: first in line, using no attempt
        if running is not None:
            self._handle_interrupted(worker, running)
        if worker.replaced or self._ledger.closed:
            return  # killed while retiring too: its replacement runs already
        if self._startup.worker_ended(worker.started.value > 0, reason is not None):
            code = worker.exitcode
            message = failures.startup_crash_message(code, worker.pid, worker.start_error)
            self._ledger.break_down(
                message,
                lambda unit: failures.startup_crash_error(unit.key, unit.name, message, code),
            )
            return
        self._spawn_replacement()

    def _handle_interrupted(self, worker: Worker, job: Job) -> None:
        stopping = worker.stopping
        cause = Cause.CRASH if stopping in (None, StopReason.RETIRE) else Cause(stopping.value)
        if cause in (Cause.CRASH, Cause.TIMEOUT):
            job.attempts += 1
        retries = self.config.retries
        decided = policy.verdict(cause, job.attempts, retries, job.stalls)
        if decided is Verdict.FAIL:
            self._ledger.settle_error(job, interruption_error(worker, job.unit, cause, self.config))
            return
        if decided is Verdict.RETRY:
            error = interruption_error(worker, job.unit, cause, self.config)
            logger.warning("orchestrix: %s; retrying (%d/%d)", error, job.attempts, retries)
        self.monitor.note_retry(job.unit)
        self._ledger.requeue([job])

    # -- deadlines ----------------------------------------------------------------------------

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = self._deadlines.next(self._busy(), bool(self._ledger.pending))
        deadlines += self._respawns
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _enforce_deadlines(self) -> None:
        self._deadlines.enforce(self._busy(), bool(self._ledger.pending), time.monotonic())

    def _busy(self) -> list[Worker]:
        return [w for w in self._workers if w.watched]

    # -- reporting: every job leaves the ledger through _settle ----------------------------------

    def _fail_unpicklable(self, job: Job, exc: BaseException) -> None:
        error = failures.unsendable_task(job.unit.name, exc)
        error.__cause__ = exc
        self._settle_failure(job, TaskFailure(job.unit.key, job.unit.name, error, None))

    def _settle_failure(self, job: Job, failure: TaskFailure) -> None:
        self._settle(job, UnitOutcome(job.unit, failure=failure))

    def _settle(self, job: Job, outcome: UnitOutcome) -> None:
        self._ledger.settle(job, outcome)


def _failing_with(message: str) -> Callable[[WorkUnit], TaskError]:
    return lambda unit: failures.broken_pool_error(unit.key, unit.name, message)
