"""The worker process of the ``multiprocessing`` backend.

It reads batches of jobs from its pipe, runs them in order, and writes back their results in
batches: a batch of results is sent when the batch of jobs is done, or earlier once
``FLUSH_SECONDS`` have passed since the last send, so that a slow job never holds back the results
of the fast ones before it and the parent always knows, within that delay, which job is running.
"""

from __future__ import annotations

import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..errors import OrchestrixError
from ..execute import TaskCaller, TaskFailure, UnitOutcome, portable_failure, run_unit
from ..observe import ProcessObserver, UsageMeter, WorkerSettings
from ..transfer import Dumper

FLUSH_SECONDS = 0.005

# Message kinds, parent -> worker
RUN, STOP = "run", "stop"
# Job statuses, worker -> parent
OK, FAILED, UNLOADABLE = "ok", "failed", "unloadable"


def worker_main(
    conn: Connection, dump_dir: str | None, started: Any, settings: WorkerSettings
) -> None:
    """Entry point of a worker process. ``started`` is a shared counter of the jobs it started:
    if the worker dies, the parent reads it to know which job was running."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    observer = ProcessObserver(settings)
    if settings.profiling != "timing":
        # Profiles are written when the worker ends, also when the pool terminates it.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    observer.start()
    worker = _Worker(conn, Dumper(dump_dir) if dump_dir else None, started, observer)
    try:
        worker.serve()
    finally:
        # Ending already: a SIGTERM from the pool's close must not cut the profile's writing
        # short (the pool kills what has not ended after its grace period).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        observer.stop()
        worker.meter.close()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)


class _Worker:
    def __init__(
        self, conn: Connection, dumper: Dumper | None, counter: Any, observer: ProcessObserver
    ) -> None:
        self.conn = conn
        self.dumper = dumper
        self.counter = counter
        self.caller: TaskCaller | None = observer if observer.wraps_calls else None
        self.meter = UsageMeter(time.process_time)

    def serve(self) -> None:
        while True:
            try:
                message = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                return  # the parent is gone
            if message[0] == STOP:
                return
            self.run_batch(message[1], message[2])

    def run_batch(self, job_ids: list[int], payload: bytes) -> None:
        self.meter.begin()
        try:
            work = pickle.loads(payload)
        except Exception:  # noqa: BLE001 - e.g. a module that this process cannot import
            self.counter.value += len(job_ids)
            text = traceback.format_exc()
            self.send([(job_id, UNLOADABLE, text, 0.0, [], None) for job_id in job_ids])
            return
        results: list[tuple[Any, ...]] = []
        last_send = time.monotonic()
        for job_id, (unit, inputs) in zip(job_ids, work, strict=True):
            self.counter.value += 1  # a write to shared memory: free, unlike a message per job
            status, data, outcome = self.run_job(unit, inputs)
            results.append(
                (job_id, status, data, outcome.started, outcome.walls, outcome.growth_mb)
            )
            now = time.monotonic()
            if now - last_send >= FLUSH_SECONDS:
                self.send(results)
                results, last_send = [], now
                self.meter.begin()
        if results:
            self.send(results)

    def send(self, results: list[tuple[Any, ...]]) -> None:
        """Send a window of results with the CPU time and peak memory measured over it."""
        cpu, peak_rss_mb = self.meter.end()
        message = (results, cpu, peak_rss_mb)
        self.conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def run_job(self, unit: Any, inputs: Any) -> tuple[str, Any, UnitOutcome]:
        outcome = run_unit(unit, inputs, remote=True, caller=self.caller)
        status, data = _encode(unit, outcome, self.dumper)
        outcome.value = None  # sent: do not keep it alive until the next job
        return status, data, outcome


def _encode(unit: Any, outcome: UnitOutcome, dumper: Dumper | None) -> tuple[str, Any]:
    if outcome.failure is not None:
        return FAILED, _encode_failure(outcome.failure)
    try:
        if dumper is None:
            return OK, _pickle_result(outcome.value)
        return OK, dumper.encode(outcome.value, _pickle_result)  # leaves no file if it fails
    except (OSError, OrchestrixError) as exc:  # a dump failed: a full disk, no dump directory
        failure = TaskFailure(unit.key, unit.name, exc, traceback.format_exc())
        return FAILED, _encode_failure(failure)
    except Exception as exc:  # noqa: BLE001 - whatever the result holds that pickle refuses
        error = pickle.PicklingError(
            f"the result of task {unit.name!r} could not be pickled to return it: "
            f"{type(exc).__name__}: {exc}"
        )
        return FAILED, _encode_failure(TaskFailure(unit.key, unit.name, error, None))


def _pickle_result(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. an instance of a class that came by value
        import cloudpickle  # type: ignore[import-untyped]

        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return data


def _encode_failure(failure: TaskFailure) -> bytes:
    return pickle.dumps(portable_failure(failure), protocol=pickle.HIGHEST_PROTOCOL)
