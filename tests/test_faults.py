"""Faults of the multiprocessing backend: timeouts, crashes, memory, recycling, pickling, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import orchestrix as ox
from tasks import (
    add,
    allocate,
    count_running,
    crash_once,
    exit_with,
    inc,
    kill_self,
    kill_worker_once,
    make_array,
    record,
    record_slowly,
    recorded,
    return_lock,
    scale,
    segfault,
    sleep_for,
    worker_pid,
)

pytestmark = pytest.mark.skipif(
    "multiprocessing" not in ox.backends.AVAILABLE, reason="no multiprocessing backend"
)

METHODS = [
    m for m in ("forkserver", "fork") if m in __import__("multiprocessing").get_all_start_methods()
]


def pool(method="forkserver", **options):
    return ox.Orchestrator(mode="multiprocessing", nb_workers=2, mp_mode=method, **options)


@pytest.mark.parametrize("method", METHODS)
def test_per_job_timeout_kills_the_task_not_the_others(method):
    with pool(method, per_job_timeout=1, retries=0) as orch:
        slow, quick = sleep_for(60, "slow"), [inc(i) for i in range(20)]
        done = {}
        with pytest.raises(ox.TaskTimeoutError) as info:
            for index, value in orch.as_completed([*quick, slow]):
                done[index] = value
        assert info.value.key == slow.key and info.value.limit == 1
        assert "per_job_timeout=1" in str(info.value)
        assert done == {i: i + 1 for i in range(20)}
        assert orch.compute(inc(1)) == 2  # the pool is whole again


def test_per_job_timeout_retries_then_fails(tmp_path):
    log = str(tmp_path / "attempts")
    with pool(per_job_timeout=0.5, retries=2) as orch, pytest.raises(ox.TaskTimeoutError):
        orch.compute(sleep_for(30, record(log, 1)))
    # record -> sleep_for is one fused unit: it was started three times (1 + 2 retries)
    assert recorded(log) == ["1", "1", "1"]


@pytest.mark.parametrize("method", METHODS)
def test_crash_is_retried_then_reported_with_exit_code(method, tmp_path):
    log = str(tmp_path / "attempts")
    with pool(method, retries=2) as orch:
        with pytest.raises(ox.WorkerCrashedError) as info:
            orch.compute(exit_with(3, log))
        assert info.value.exitcode == 3 and "exited with code 3" in str(info.value)
        assert len(recorded(log)) == 3
        assert orch.compute(inc(1)) == 2


def test_sigkill_mentions_the_oom_killer(tmp_path):
    log = str(tmp_path / "attempts")
    with pool(retries=0) as orch, pytest.raises(ox.WorkerCrashedError) as info:
        orch.compute(kill_self(signal.SIGKILL, log))
    assert info.value.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(info.value) and "out-of-memory" in str(info.value)
    assert len(recorded(log)) == 1


def test_segfault_is_reported():
    with pool(retries=0) as orch, pytest.raises(ox.WorkerCrashedError, match="SIGSEGV"):
        orch.compute(segfault())


def test_a_crash_once_is_absorbed_by_a_retry_and_finished_results_are_kept(tmp_path):
    # Jobs of 10 ms or more report at once; faster ones are reported in batches of up to 5 ms,
    # and such a batch can be re-run if its worker dies before sending it (documented).
    log = str(tmp_path / "ran")
    marker = str(tmp_path / "crashed")
    with pool(retries=1, factorize_tasks=False) as orch:
        finished = [record_slowly(log, i) for i in range(10)]
        graph = [add(crash_once(marker, total), 0) for total in finished]
        assert orch.compute(graph) == list(range(10))
    assert sorted(recorded(log), key=int) == [str(i) for i in range(10)]  # none recomputed


def test_crash_is_seen_at_once_not_after_a_timeout():
    # With both timeouts far beyond the test's own time limit, only the sentinel can end this.
    patient = pool(retries=0, per_job_timeout=3600, task_timeout=3600)
    with patient as orch, pytest.raises(ox.WorkerCrashedError):
        orch.compute(exit_with(1))


def test_memory_limit_is_enforced_and_not_retried(tmp_path):
    log = str(tmp_path / "attempts")
    with pool(max_ram_per_worker=150, retries=2) as orch:
        with pytest.raises(ox.WorkerMemoryError) as info:
            orch.compute(allocate(400, log))
        error = info.value
        assert error.limit_mb == 150 and error.peak_rss_mb > 150
        assert "max_ram_per_worker=150" in str(error)
        assert len(recorded(log)) == 1
        assert orch.compute(inc(1)) == 2


def test_recycling_does_not_deadlock():
    with ox.Orchestrator(mode="multiprocessing", nb_workers=3, max_tasks_per_worker=2) as orch:
        pids = list(orch.map(worker_pid, range(200), chunksize=1))  # a task per call
    assert len(pids) == 200
    assert len(set(pids)) >= 100  # each worker ran at most 2 tasks


def test_the_last_job_of_a_retiring_worker_is_timed_and_its_crash_retried(tmp_path):
    # With max_tasks_per_worker a worker retires as it is given its last job: that job is still
    # the pool's to time, and a crash in it is retried like any other.
    options = {"max_tasks_per_worker": 1, "per_job_timeout": 1}
    with pool(retries=0, **options) as orch:
        with pytest.raises(ox.TaskTimeoutError):
            orch.compute(sleep_for(60))
        assert orch.compute(inc(1)) == 2
        live = [w for w in list(orch._backend._workers) if not w.replaced]
        assert len(live) == 2  # killed while retiring: replaced once, not twice
    with pool(retries=1, **options) as orch:
        marker = str(tmp_path / "killed")
        assert orch.submit(kill_worker_once, marker, 5).result(timeout=60) == 5
        assert orch.compute(inc(1)) == 2
        live = [w for w in list(orch._backend._workers) if not w.replaced]
        assert len(live) == 2  # one replacement per worker, not two


def test_recycling_runs_no_more_than_nb_workers_tasks_at_a_time(tmp_path):
    # A replacement starts while the worker it replaces runs its last job, and waits for it.
    with pool(max_tasks_per_worker=1) as orch:
        futures = [orch.submit(count_running, str(tmp_path)) for _ in range(8)]
        assert max(future.result(timeout=60) for future in futures) <= 2


def test_unpicklable_argument_and_result_fail_only_their_task():
    lock = threading.Lock()
    with pool() as orch:
        with pytest.raises(ox.TaskError) as info:
            orch.compute(ox.task(id)(lock))
        assert "could not be sent" in str(info.value.__cause__) or "pickle" in str(info.value)
        assert "lock" in str(info.value.__cause__).lower()
        future = orch.submit(return_lock)
        error = future.exception(timeout=60)
        assert isinstance(error, ox.TaskError) and "could not be pickled" in str(error.__cause__)
        assert orch.compute(inc(41)) == 42


def test_stall_watchdog_restarts_once_then_raises(tmp_path):
    log = str(tmp_path / "attempts")
    stalling = pool(per_job_timeout=None, task_timeout=1, retries=0)
    with stalling as orch, pytest.raises(ox.StallError, match="task_timeout=1"):
        orch.compute(sleep_for(60, record(log, 7)))
    assert recorded(log) == ["7", "7"]  # the fused unit was resubmitted once


def test_results_are_copy_on_write_maps_and_files_go_early(tmp_path):
    with pool(dump_dir=str(tmp_path)) as orch:
        dump_dir = orch._backend.dump_dir
        assert Path(dump_dir).parent == tmp_path
        assert oct(os.stat(dump_dir).st_mode & 0o777) == "0o700"
        big = make_array(8 * 2**20, 2.0)
        value = orch.compute(scale(scale(big, 2.0), 0.5))
        # a copy-on-write map of the dump file: writable, and no copy of its own
        assert value.flags.writeable and not value.flags.owndata
        assert os.listdir(dump_dir) == []  # nothing needs the files any more
        assert float(value.sum()) == 2.0 * 2**20  # the map stays valid after the unlink
        value += 1  # in place, as in every mode: the change is this process's own
        assert float(value.sum()) == 3.0 * 2**20
    assert not Path(dump_dir).exists()


def test_stale_dump_directories_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"orchestrix-dump-{dead.pid}-1-abc"
    stale.mkdir()
    (stale / "x.npy").write_bytes(b"0")
    with pool(dump_dir=str(tmp_path)) as orch:
        assert orch.compute(inc(1)) == 2
    assert not stale.exists()


def test_caller_is_idle_while_tasks_sleep():
    with pool() as orch:
        orch.compute(inc(1))  # pool warm
        me = psutil.Process()
        before = me.cpu_times()
        orch.compute([sleep_for(2), sleep_for(2)])
        after = me.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.1 * 2  # under 5% of a core is the target; 10% leaves room for noise


def test_auto_mode_sizes_the_pool():
    with ox.Orchestrator(mode="auto") as orch:
        assert isinstance(orch.config.nb_workers, int) and orch.config.nb_workers >= 1
        assert orch.compute(inc(1)) == 2
        assert "nb_workers" in orch.sizing_reasons


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import orchestrix as ox
    from tasks import sleep_for
    orch = ox.Orchestrator(mode="multiprocessing", nb_workers=2, mp_mode={method!r})
    info = {{"workers": [w.pid for w in orch._backend._workers], "dump": orch._backend.dump_dir}}
    {body}
    """
)


def _run_child(tmp_path, method, body):
    script = tmp_path / "child.py"
    script.write_text(
        CHILD.format(tests=str(Path(__file__).parent), method=method, body=textwrap.dedent(body))
    )
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _gone(pids, dump_dir, within=2.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]
        if not alive and not Path(dump_dir).exists():
            return True
        time.sleep(0.05)
    return False


def _not_zombie(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_stops_workers_and_removes_dump_dir(tmp_path, method):
    child = _run_child(
        tmp_path,
        method,
        """
        print(json.dumps(info), flush=True)
        with orch:
            orch.compute([sleep_for(60), sleep_for(60)])
        """,
    )
    import json

    info = json.loads(child.stdout.readline())
    time.sleep(0.5)  # let the tasks start
    descendants = [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
    assert set(info["workers"]) <= set(descendants)  # forkserver, if any, is among them too
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=10)
    assert "KeyboardInterrupt" in stderr
    assert _gone(descendants, info["dump"]), "processes or dump directory left behind"


def test_interpreter_exit_without_close_cleans_up(tmp_path):
    child = _run_child(
        tmp_path,
        "forkserver",
        """
        print(json.dumps(info), flush=True)
        orch.compute(sleep_for(0.1))
        """,
    )
    import json

    info = json.loads(child.stdout.readline())
    child.communicate(timeout=30)
    assert child.returncode == 0
    assert _gone(info["workers"], info["dump"])


def test_many_tiny_calls_from_two_threads_all_complete():
    # Stresses the wake-up protocol between callers and the pool's manager thread.
    import concurrent.futures

    with pool() as orch, concurrent.futures.ThreadPoolExecutor(2) as callers:

        def burst(offset):
            futures = [orch.submit(abs, -(offset + i)) for i in range(5000)]
            return [f.result(timeout=60) for f in futures]

        results = list(callers.map(burst, [0, 10_000]))
    assert results == [list(range(5000)), list(range(10_000, 15_000))]


def test_unavailable_start_method_falls_back_to_spawn_with_a_warning(monkeypatch):
    from orchestrix.backends.pool import processes as mp_pool

    monkeypatch.setattr(mp_pool.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.warns(RuntimeWarning, match="using 'spawn'"), pool("forkserver") as orch:
        assert orch._backend._launcher.method == "spawn"
        assert orch.compute(inc(1)) == 2
