"""``limits="warn"``: a task over per_job_timeout or max_ram_per_worker warns and goes on.

CARS never enforced these two keys; with ``limits="warn"`` orchestrix runs such tasks to the end
as CARS did, and says so once per task. The default (``"kill"``) is tested with the faults:
test_faults.py (multiprocessing) and test_local_dask.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import pytest

import orchestrix as ox
from deadline import DEADLINE, guarded, within
from orchestrix.backends import AVAILABLE
from tasks import allocate, inc, recorded, sleep_for, worker_pid

pool_only = pytest.mark.skipif("multiprocessing" not in AVAILABLE, reason="no multiprocessing")
dask_only = pytest.mark.skipif("local_dask" not in AVAILABLE, reason="no local_dask backend")


class _Warnings(logging.Handler):
    """The ``orchestrix`` logger's warnings that contain ``text``; ``seen`` is set at the first
    (a dask worker's warning reaches the caller as an event, maybe after the result)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.seen.set()


@contextlib.contextmanager
def warnings_with(text: str) -> Iterator[_Warnings]:
    handler = _Warnings(text)
    logger = logging.getLogger("orchestrix")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pool_only
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_task_past_per_job_timeout_warns_and_finishes(method, tmp_path):
    options = {"mp_mode": method, "per_job_timeout": 0.5, "retries": 0, "out_dir": str(tmp_path)}
    warned = warnings_with("per_job_timeout=0.5")
    orchestrator = guarded(mode="multiprocessing", nb_workers=2, limits="warn", **options)
    with warned as seen, orchestrator as orch:
        slow = sleep_for(2, "done")
        assert within(DEADLINE, orch.compute, slow) == "done"
        assert within(DEADLINE, orch.compute, inc(1)) == 2
    assert len(seen.messages) == 1, seen.messages  # one warning per task
    message = seen.messages[0]
    assert "'sleep_for'" in message and slow.key in message and "keeps running" in message
    assert "keeps running" in (tmp_path / "orchestrix.log").read_text()  # in the run's log too


@pool_only
def test_a_task_over_max_ram_per_worker_warns_and_finishes(tmp_path):
    log = str(tmp_path / "attempts")
    with warnings_with("max_ram_per_worker=150") as seen:
        options = {"max_ram_per_worker": 150, "retries": 2, "limits": "warn"}
        with guarded(mode="multiprocessing", nb_workers=2, **options) as orch:
            assert within(DEADLINE, orch.compute, allocate(400, log)) == 1.0
            assert within(DEADLINE, orch.compute, inc(1)) == 2
    assert len(seen.messages) == 1, seen.messages
    assert "'allocate'" in seen.messages[0] and "keeps running" in seen.messages[0]
    assert len(recorded(log)) == 1  # ran once: not killed, not retried


@pool_only
def test_the_stall_watchdog_still_restarts_with_warn(tmp_path):
    stalling = {"per_job_timeout": 0.5, "task_timeout": 1, "retries": 0, "limits": "warn"}
    orchestrator = guarded(mode="multiprocessing", nb_workers=1, **stalling)
    with orchestrator as orch, pytest.raises(ox.StallError):
        within(DEADLINE, orch.compute, sleep_for(60))


@dask_only
def test_a_dask_task_past_per_job_timeout_warns_and_finishes():
    with warnings_with("per_job_timeout=0.5") as seen:
        options = {"per_job_timeout": 0.5, "retries": 0, "limits": "warn"}
        with guarded(mode="local_dask", nb_workers=1, **options) as orch:
            pid = within(DEADLINE, orch.submit(worker_pid).result)
            slow = sleep_for(2, "done")
            assert within(DEADLINE, orch.compute, slow) == "done"
            assert seen.seen.wait(DEADLINE)
            assert within(DEADLINE, orch.submit(worker_pid).result) == pid  # not restarted
    assert len(seen.messages) == 1, seen.messages
    assert "'sleep_for'" in seen.messages[0] and slow.key in seen.messages[0]


@dask_only
def test_a_dask_worker_over_max_ram_per_worker_warns_and_is_not_terminated(tmp_path):
    log = str(tmp_path / "attempts")
    with warnings_with("max_ram_per_worker=300") as seen:
        options = {"max_ram_per_worker": 300, "retries": 2, "limits": "warn"}
        with guarded(mode="local_dask", nb_workers=1, **options) as orch:
            # dask's nanny terminates a worker at 95% of its memory limit: not with warn
            assert within(DEADLINE, orch.compute, allocate(600, log)) == 1.0
            assert seen.seen.wait(DEADLINE)
    assert len(recorded(log)) == 1  # ran once: its worker was not terminated
    assert "'allocate'" in seen.messages[0] and "keeps running" in seen.messages[0]
