"""Worker processes that have children of their own: a task may start processes (a pool, an
orchestrator), and a task that forks a child and then dies is seen dead at once, although the
child keeps the worker's pipes open."""

from __future__ import annotations

import multiprocessing
import signal
import time

import psutil
import pytest

import orchestrix as ox
from deadline import DEADLINE, guarded, within
from hostile import fork_then_die, lines, orchestrator_of_its_own, pool_of_its_own
from tasks import inc

pytestmark = pytest.mark.skipif(
    "multiprocessing" not in ox.backends.AVAILABLE, reason="no multiprocessing backend"
)

METHODS = [
    m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()
]
#: the forked child sleeps this long: a crash seen only when it exits is seen far too late
CHILD_SECONDS = 30


def pool(method: str, **options):
    return guarded(mode="multiprocessing", nb_workers=2, mp_mode=method, **options)


@pytest.mark.timeout(4 * DEADLINE + 60)
@pytest.mark.parametrize("method", METHODS)
def test_a_task_may_run_a_multiprocessing_pool(method):
    with pool(method) as orch:
        assert within(DEADLINE, orch.compute, pool_of_its_own(method)) == [1, 2, 3]


@pytest.mark.timeout(4 * DEADLINE + 60)
@pytest.mark.parametrize("method", METHODS)
def test_a_task_may_run_an_orchestrator(method):
    with pool(method) as orch:
        assert within(DEADLINE, orch.compute, orchestrator_of_its_own(method)) == [2, 3]


@pytest.mark.timeout(4 * DEADLINE + 60)
@pytest.mark.parametrize("method", METHODS)
def test_a_task_that_forks_then_dies_is_seen_dead_at_once(method, tmp_path):
    pid_file = str(tmp_path / "grandchildren")
    # Far under the child's sleep: a hang guard, not a benchmark. Only a crash seen when the
    # worker itself dies ends the call in time; its child holds the pipes for 30 s. The close
    # must not wait for the child either (nor may the forkserver).
    deadline = min(DEADLINE, CHILD_SECONDS * 2 / 3)
    started = time.time()
    patient = {"retries": 0, "per_job_timeout": 3600, "task_timeout": 3600}
    try:
        with pool(method, close_within=deadline, **patient) as orch:
            with pytest.raises(ox.WorkerCrashedError) as info:
                within(deadline, orch.compute, fork_then_die(pid_file, CHILD_SECONDS))
            assert info.value.name == fork_then_die.name and info.value.exitcode == 1
            assert within(DEADLINE, orch.compute, inc(41)) == 42
    finally:
        # Orphaned when the worker died, they are no descendants of ours: the leak check of
        # conftest cannot see them.
        _kill_all(lines(pid_file), started)


def _kill_all(pids: list[str], started: float) -> None:
    for pid in map(int, pids):
        try:
            child = psutil.Process(pid)
            if child.create_time() >= started - 1:  # not a pid reused since it ended
                child.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
