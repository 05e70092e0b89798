"""The worker process of the ``multiprocessing`` backend.

It reads batches of jobs from its socket, runs them in order, and writes back their results in
windows (:class:`~.protocol.ResultWindow`): a window is sent when the batch of jobs is done, or
earlier once ``FLUSH_SECONDS`` have passed since the last send, so that a slow job never holds back
the results of the fast ones before it and the parent always knows, within that delay, which job
is running.

A worker dies with its parent (Linux: the parent-death signal), so a caller killed with SIGKILL
leaves no worker running its tasks to the end. A worker may start processes of its own (a task's
own pool or orchestrator): it is not daemonic inside.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from typing import Any

from ... import failures
from ...errors import OrchestrixError
from ...failures import Failure, TaskFailure, portable_exception, portable_failure
from ...worker.dumps import Dumper
from ...worker.execute import TaskCaller, UnitOutcome, run_unit
from ...worker.observe import ProcessObserver, UsageMeter, WorkerSettings
from ...worker.preload import import_modules
from .protocol import (
    JobResult,
    JobStatus,
    Preloaded,
    ResultWindow,
    RunBatch,
    StartFailed,
    Unloadable,
    recv_message,
    send_message,
)

FLUSH_SECONDS = 0.005
_PR_SET_PDEATHSIG = 1


def worker_main(
    sock: socket.socket,
    dump_dir: str | None,
    started: Any,
    settings: WorkerSettings,
    caller_pid: int,
    preload: tuple[str, ...] = (),
) -> None:
    """Entry point of a worker process. ``started`` is a shared counter of the jobs it started:
    if the worker dies, the parent reads it to know which job was running. ``caller_pid`` is the
    process that runs the pool (the worker's parent, or the forkserver's). ``preload``: modules
    to import before the first job (here, not in the caller before a fork: the caller's modules
    are its own business)."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _drop_forkserver_lifeline()
    _die_with_parent(caller_pid)
    # multiprocessing refuses children to a daemonic process; a task may need them, and the
    # pool stops its workers itself (their children are the task's business).
    multiprocessing.current_process().daemon = False
    try:
        observer = ProcessObserver(settings)
        if settings.profiling != "timing":
            # Profiles are written when the worker ends, also when the pool terminates it.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        observer.start()
        worker = _Worker(sock, Dumper(dump_dir) if dump_dir else None, started, observer)
    except BaseException:  # noqa: BLE001 - whatever stops the worker from starting is reported
        send_message(sock, StartFailed(traceback.format_exc()))
        sys.exit(1)
    try:
        if _preloaded(sock, preload):
            worker.serve()
    finally:
        # Ending already: a SIGTERM from the pool's close must not cut the profile's writing
        # short (the pool kills what has not ended after its grace period).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        observer.stop()
        worker.meter.close()


def _preloaded(sock: socket.socket, preload: tuple[str, ...]) -> bool:
    """Import the preload modules (those the forkserver has cost nothing) and tell the parent."""
    if not preload:
        return True
    failure = import_modules(preload)
    send_message(sock, Preloaded(failure))
    return failure is None


def _die_with_parent(caller_pid: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere the worker
    notices when its socket closes, between jobs). The parent is the caller, or the forkserver,
    which exits when the caller dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    try:  # the caller may have died before the request was made: then nothing would come
        os.kill(caller_pid, 0)
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:
        pass


def _drop_forkserver_lifeline() -> None:
    """Close this process's copy of the forkserver's liveness pipe.

    The forkserver exits when the last write end of that pipe closes; the caller holds one, and
    multiprocessing hands one to every process it starts (forked from the forkserver or from a
    caller that has one). Kept here, it would keep the forkserver, this worker's parent, alive
    after the caller died, and the parent-death signal would never come. A task that starts its
    own forkserver pool then gets a forkserver of its own."""
    import multiprocessing.forkserver

    server: Any = multiprocessing.forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        return
    try:
        os.close(fd)
    except OSError:
        pass
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)


class _Worker:
    def __init__(
        self, sock: socket.socket, dumper: Dumper | None, counter: Any, observer: ProcessObserver
    ) -> None:
        self.sock = sock
        self.dumper = dumper
        self.counter = counter
        self.caller: TaskCaller | None = observer if observer.wraps_calls else None
        self.meter = UsageMeter(time.process_time)

    def serve(self) -> None:
        while True:
            try:
                message = recv_message(self.sock)
            except OSError:
                return  # the parent is gone
            if not isinstance(message, RunBatch):
                return  # Stop, or the parent closed its end
            self.run_batch(message.job_ids, message.payload)

    def run_batch(self, job_ids: list[int], payload: bytes) -> None:
        self.meter.begin()
        # The counter says which job runs: a write to shared memory, free, unlike a message per
        # job. Loading the batch counts as running its first job, so that a crash while
        # unpickling is that job's and not taken for a worker that cannot start.
        self.counter.value += 1
        try:
            work = pickle.loads(payload)
        except BaseException as exc:  # noqa: BLE001 - e.g. a module this process cannot import
            self.counter.value += len(job_ids) - 1
            why = Unloadable(portable_exception(exc), traceback.format_exc())
            data = pickle.dumps(why, protocol=pickle.HIGHEST_PROTOCOL)
            self.send([JobResult(i, JobStatus.UNLOADABLE, data, 0.0, [], None) for i in job_ids])
            return
        results: list[JobResult] = []
        last_send = time.monotonic()
        work_of_jobs = zip(job_ids, work.units, work.inputs, strict=True)
        for position, (job_id, unit, inputs) in enumerate(work_of_jobs):
            if position:
                self.counter.value += 1
            status, data, outcome = self.run_job(unit, inputs)
            results.append(
                JobResult(job_id, status, data, outcome.started, outcome.walls, outcome.growth_mb)
            )
            now = time.monotonic()
            if now - last_send >= FLUSH_SECONDS:
                self.send(results)
                results, last_send = [], now
                self.meter.begin()
        if results:
            self.send(results)

    def send(self, results: list[JobResult]) -> None:
        """Send a window of results with the CPU time and peak memory measured over it."""
        cpu, peak_rss_mb = self.meter.end()
        send_message(self.sock, ResultWindow(results, cpu, peak_rss_mb))

    def run_job(self, unit: Any, inputs: Any) -> tuple[JobStatus, Any, UnitOutcome]:
        outcome = run_unit(unit, inputs, remote=True, caller=self.caller)
        status, data = _encode(unit, outcome, self.dumper)
        outcome.value = None  # sent: do not keep it alive until the next job
        return status, data, outcome


def _encode(unit: Any, outcome: UnitOutcome, dumper: Dumper | None) -> tuple[JobStatus, Any]:
    if outcome.failure is not None:
        return JobStatus.FAILED, _encode_failure(outcome.failure)
    try:
        if dumper is None:
            return JobStatus.OK, _pickle_result(outcome.value)
        return JobStatus.OK, dumper.encode(
            outcome.value, _pickle_result
        )  # leaves no file if it fails
    except (OSError, OrchestrixError) as exc:  # a dump failed: a full disk, no dump directory
        failure = TaskFailure(unit.key, unit.name, exc, traceback.format_exc())
        return JobStatus.FAILED, _encode_failure(failure)
    except BaseException as exc:  # noqa: BLE001 - whatever the result holds that pickle refuses
        error = failures.unreturnable_result(unit.name, exc)
        text = "".join(traceback.format_exception(exc))
        return JobStatus.FAILED, _encode_failure(TaskFailure(unit.key, unit.name, error, text))


def _pickle_result(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. an instance of a class that came by value
        import cloudpickle  # type: ignore[import-untyped]

        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def _encode_failure(failure: Failure) -> bytes:
    return pickle.dumps(portable_failure(failure), protocol=pickle.HIGHEST_PROTOCOL)
