"""The worker process of the ``multiprocessing`` backend.

It reads batches of jobs from its pipe, runs them in order, and writes back their results in
batches: a batch of results is sent when the batch of jobs is done, or earlier once
``FLUSH_SECONDS`` have passed since the last send, so that a slow job never holds back the results
of the fast ones before it and the parent always knows, within that delay, which job is running.
"""

from __future__ import annotations

import pickle
import signal
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..execute import TaskFailure, portable_failure, run_unit
from ..transfer import Dumper

FLUSH_SECONDS = 0.005

# Message kinds, parent -> worker
RUN, STOP = "run", "stop"
# Job statuses, worker -> parent
OK, FAILED, UNLOADABLE = "ok", "failed", "unloadable"


def worker_main(conn: Connection, dump_dir: str | None, started: Any) -> None:
    """Entry point of a worker process. ``started`` is a shared counter of the jobs it started:
    if the worker dies, the parent reads it to know which job was running."""
    # Ctrl-C in a terminal reaches the whole process group: the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dumper = Dumper(dump_dir) if dump_dir else None
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == STOP:
            return
        _run_batch(conn, message[1], message[2], dumper, started)


def _run_batch(
    conn: Connection, job_ids: list[int], payload: bytes, dumper: Dumper | None, counter: Any
) -> None:
    try:
        work = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - e.g. a module that this process cannot import
        counter.value += len(job_ids)
        text = traceback.format_exc()
        _send(conn, [(job_id, UNLOADABLE, text, 0.0) for job_id in job_ids])
        return
    results: list[tuple[Any, ...]] = []
    last_send = time.monotonic()
    for job_id, (unit, inputs) in zip(job_ids, work, strict=True):
        counter.value += 1  # a write to shared memory: free, unlike a message per job
        started = time.perf_counter()
        status, data = _run_job(unit, inputs, dumper)
        results.append((job_id, status, data, time.perf_counter() - started))
        now = time.monotonic()
        if now - last_send >= FLUSH_SECONDS:
            _send(conn, results)
            results, last_send = [], now
    if results:
        _send(conn, results)


def _send(conn: Connection, results: list[tuple[Any, ...]]) -> None:
    conn.send_bytes(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))


def _run_job(unit: Any, inputs: Any, dumper: Dumper | None) -> tuple[str, Any]:
    outcome = run_unit(unit, inputs, remote=True)
    if outcome.failure is not None:
        return FAILED, _encode_failure(outcome.failure)
    try:
        value = dumper.dump(outcome.value) if dumper else outcome.value
    except OSError as exc:
        failure = TaskFailure(unit.key, unit.name, exc, traceback.format_exc())
        return FAILED, _encode_failure(failure)
    try:
        return OK, _pickle_result(value)
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
