"""The local_dask mode: same semantics as multiprocessing, on a dask LocalCluster."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import orchestrix as ox
from orchestrix.backends import AVAILABLE
from tasks import (
    CustomBaseError,
    checksum,
    compute_in_thread,
    inc,
    kill_worker_once,
    make_array,
    raise_base_exception,
    record,
    recorded,
    sleep_for,
)

pytestmark = pytest.mark.skipif("local_dask" not in AVAILABLE, reason="no local_dask backend")


def cluster(**options):
    return ox.Orchestrator(mode="local_dask", nb_workers=2, **options)


def test_listens_on_localhost_only_and_no_dashboard_by_default():
    import psutil

    with cluster() as orch:
        me = psutil.Process()
        listening = [
            c.laddr.ip
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and set(listening) == {"127.0.0.1"}
        client = orch._backend.client
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
        assert orch._backend.dashboard_link is None
        assert all(w["nthreads"] == 1 for w in workers.values())


def test_close_from_another_thread_ends_a_waiting_compute(tmp_path):
    orch = cluster()
    try:
        waiting, errors = compute_in_thread(orch, tmp_path / "started", 60)
        future = orch.submit(time.sleep, 60)
        closer = threading.Thread(target=orch.close)
        closer.start()
        closer.join(60)
        waiting.join(60)
        assert not closer.is_alive(), "close did not end"
        assert not waiting.is_alive(), "the compute went on after close"
    finally:
        orch.close()
    assert len(errors) == 1 and isinstance(errors[0], ox.TaskError), errors
    assert "closed" in str(errors[0])
    assert future.cancelled() or isinstance(future.exception(timeout=30), ox.TaskError)


def test_dashboard_binds_to_localhost_when_asked():
    with cluster(activate_dashboard=True) as orch:
        link = orch._backend.dashboard_link
        assert link and "127.0.0.1" in link


def test_per_job_timeout_fails_the_task_and_restarts_its_worker():
    with cluster(per_job_timeout=1) as orch:
        with pytest.raises(ox.TaskTimeoutError) as info:
            orch.compute(sleep_for(30, "late"))
        assert info.value.limit == 1
        assert orch.compute(inc(1)) == 2


@pytest.mark.timeout(120)
def test_a_timeout_restart_does_not_blame_the_tasks_the_worker_held():
    # One worker, retries=0: the innocent call waits on the worker whose task times out, and the
    # next compute may land on that worker before its restart; neither may count it as a crash.
    options = {"nb_workers": 1, "per_job_timeout": 3, "retries": 0}
    with ox.Orchestrator(mode="local_dask", **options) as orch:
        late = orch.submit(sleep_for, 30, "late")
        innocent = orch.submit(sleep_for, 1, "innocent")
        with pytest.raises(ox.TaskTimeoutError):
            late.result(timeout=60)
        assert innocent.result(timeout=60) == "innocent"
        for attempt in range(2):
            with pytest.raises(ox.TaskTimeoutError):
                orch.compute(sleep_for(30, ("late", attempt)))
            assert orch.compute(sleep_for(0.5, attempt)) == attempt


BASE_EXCEPTIONS = {
    "system_exit": SystemExit,
    "keyboard_interrupt": KeyboardInterrupt,
    "cancelled": asyncio.CancelledError,
    "custom": CustomBaseError,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("per_job_timeout", [600, None])  # in a thread of ours, or of dask's
def test_a_task_raising_a_base_exception_fails_with_its_task_error_run_once(
    tmp_path, per_job_timeout
):
    with cluster(retries=2, task_timeout=60, per_job_timeout=per_job_timeout) as orch:
        for kind, expected in BASE_EXCEPTIONS.items():
            log = str(tmp_path / kind)
            with pytest.raises(ox.TaskError) as info:
                orch.compute(raise_base_exception(kind, log))
            assert type(info.value) is ox.TaskError, kind  # not a crash, timeout or stall
            assert info.value.name == "raise_base_exception"
            assert isinstance(info.value.__cause__, expected), kind
            assert recorded(log) == ["x"], kind  # run once, not retried
        assert orch.compute(inc(1)) == 2  # the workers are fine


@pytest.mark.timeout(60)
def test_an_escape_from_the_timeout_thread_is_not_a_timeout(monkeypatch):
    from orchestrix.backends.dask import tasks as dask_tasks
    from orchestrix.graph.factorize import WorkUnit
    from orchestrix.graph.tasks import TaskNode

    def escape(unit, inputs):
        raise KeyboardInterrupt("escaped the run")

    monkeypatch.setattr(dask_tasks, "_run_measured", escape)
    unit = WorkUnit((TaskNode.call(abs, "abs", (-1,), {}, "abs-key"),), ())
    outcome = dask_tasks._run_with_timeout(unit, {}, 30)
    from orchestrix.failures import TaskFailure

    assert isinstance(outcome.failure, TaskFailure)  # what the task raised, not a verdict
    assert isinstance(outcome.failure.exception, KeyboardInterrupt)
    assert outcome.failure.key == "abs-key"


def test_worker_killed_mid_task_is_replaced_and_the_run_completes(tmp_path):
    marker = str(tmp_path / "killed")
    with cluster(retries=2) as orch:
        values = orch.compute([inc(kill_worker_once(marker, i)) for i in range(4)])
    assert values == [1, 2, 3, 4]
    assert os.path.exists(marker)


def test_a_worker_dying_every_time_ends_in_worker_crashed_error():
    import signal

    from tasks import kill_self

    with cluster(retries=1) as orch, pytest.raises(ox.WorkerCrashedError):
        orch.compute(kill_self(signal.SIGKILL))


def test_restarted_workers_spawn_whatever_the_applications_dask_config_says(tmp_path):
    """CARS's dask config says forkserver: a nanny restarting a crashed worker read it then,
    long after the cluster's start, and distributed's forkserver outlived the orchestrator
    (the autouse leftover check of conftest fails on it). The application's value stays."""
    import dask.config
    import psutil

    from tasks import crash_once

    def forkservers():
        children = psutil.Process().children(recursive=True)
        return [p for p in children if "forkserver" in " ".join(p.cmdline())]

    before = forkservers()
    marker = str(tmp_path / "crashed")
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        # at most two deaths (one per worker running crash_once before the marker exists)
        with cluster(retries=2) as orch:
            assert orch.compute([crash_once(marker, i) for i in range(3)]) == [0, 1, 2]
        assert os.path.exists(marker)  # a worker died and was restarted
        assert dask.config.get("distributed.worker.multiprocessing-method") == "forkserver"
        assert forkservers() == before


def test_existing_client_is_used_and_left_running(tmp_path):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as local,
        Client(local) as client,
    ):
        options = {"out_dir": str(tmp_path), "profiling": {"mode": "cprofile"}}
        with ox.Orchestrator(mode="local_dask", client=client, **options) as orch:
            assert orch.compute(inc(41)) == 42
        assert client.status == "running"
        assert client.submit(abs, -3).result() == 3
        # the workers outlive the orchestrator: its plugin left them when it closed
        assert (
            "orchestrix-observer"
            not in client.run(lambda dask_worker: list(dask_worker.plugins)).popitem()[1]
        )
        assert len(list((tmp_path / "profiling" / "cprofile").glob("*.prof"))) == 1
        assert (tmp_path / "profiling" / "cprofile_summary.txt").exists()


def test_client_is_refused_outside_dask_modes():
    with pytest.raises(ox.ConfigError, match="client"):
        ox.Orchestrator(mode="sequential", client=object())


def test_memory_logger_writes_one_file_per_worker(tmp_path):
    with cluster(use_memory_logger=True, out_dir=str(tmp_path)) as orch:
        orch.compute(sleep_for(1.5, 1))
    files = sorted((tmp_path / "memory").glob("worker-*.csv"))
    assert len(files) == 2
    lines = files[0].read_text().splitlines()
    assert lines[0] == "time,rss_mb" and len(lines) >= 2


def test_fused_chain_is_one_dask_task(tmp_path):
    log = str(tmp_path / "ran")
    with cluster() as orch:
        node = inc(inc(record(log, 1)))
        assert orch.compute(node) == 3
        assert len(orch._engine.plan([node])) == 1
    assert recorded(log) == ["1"]


def test_scheduler_address_connects_to_a_running_scheduler():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        with ox.Orchestrator(mode="local_dask", scheduler_address=local.scheduler_address) as orch:
            assert orch.compute(inc(1)) == 2
        assert local.status.name == "running"


def test_stall_watchdog_restarts_once_then_raises():
    stalling = cluster(per_job_timeout=None, task_timeout=1, retries=5)
    with stalling as orch, pytest.raises(ox.StallError, match="task_timeout=1"):
        orch.compute(sleep_for(60, 1))


def test_notebook_representation_shows_the_dashboard_link():
    with cluster(activate_dashboard=True) as orch:
        page = orch._repr_html_()
        assert "local_dask" in page and orch.dashboard_link in page and "<a href=" in page


def test_intermediate_progress_is_not_a_stall():
    # One target at the end of a chain of 0.6 s steps: for ~4 s only intermediate tasks finish,
    # longer than task_timeout=1 twice over; the watchdog must count them as progress.
    from tasks import sleep_for as step

    with cluster(per_job_timeout=None, task_timeout=1, factorize_tasks=False) as orch:
        node = step(0.6, 0)
        for _ in range(6):
            node = step(0.6, inc(node))
        assert orch.compute(node) == 6


def test_results_that_are_also_inputs_travel_whole_with_their_buffers():
    # A result leaves its worker pickled by orchestrix, its large buffers out of band: a target
    # that another target reads, and a submitted result, arrive whole.
    with cluster() as orch:
        array = make_array(2**20, 1.5)
        got, total = orch.compute([array, checksum(array)])
        assert got.shape == (2**17,) and float(got.sum()) == total == 1.5 * 2**17
        submitted = orch.submit(make_array, 2**20, 2.0).result()
        assert submitted.shape == (2**17,) and float(submitted.sum()) == 2.0 * 2**17
