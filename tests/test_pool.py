"""The multiprocessing pool's mechanism: dispatch that cannot deadlock, ends that reach every
waiting call, workers that cannot start, callbacks that block, a caller killed with SIGKILL."""

from __future__ import annotations

import concurrent.futures
import glob
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import orchestrix as ox
from orchestrix.backends.pool import manager as mp_backend
from orchestrix.backends.pool import processes
from tasks import compute_in_thread, inc, sleep_for

pytestmark = [
    pytest.mark.skipif(
        "multiprocessing" not in ox.backends.AVAILABLE, reason="no multiprocessing backend"
    ),
    pytest.mark.timeout(120),  # each of these hung before its fix: a hang fails, in bounded time
]

METHODS = [
    m for m in ("forkserver", "fork", "spawn") if m in multiprocessing.get_all_start_methods()
]


def pool(method="forkserver", **options):
    return ox.Orchestrator(mode="multiprocessing", nb_workers=2, mp_mode=method, **options)


def increment(x):
    return x + 1


def megabyte(i):
    return bytes([i % 256]) * 1_000_000


# -- dispatch: batches and results of any size, both ways at once -------------------------------


@pytest.mark.parametrize("chunksize", [2_000, 10_000])
def test_a_million_items_in_big_chunks(chunksize):
    # Batches of 512 chunks of 10,000 ints go out while the results of the last ones come back:
    # both messages outgrow the socket buffers, so blocking writes on both sides waited for ever.
    with pool() as orch:
        results = list(orch.map(increment, range(1_000_000), chunksize=chunksize))
    assert results == list(range(1, 1_000_001))


@pytest.mark.parametrize("method", METHODS)
def test_many_80kb_texts(method):
    texts = [f"{i:06d}" + "a" * 80_000 for i in range(3_000)]
    with pool(method) as orch:
        results = list(orch.map(str.upper, texts))
    assert results == [text.upper() for text in texts]


def test_two_thousand_results_of_a_megabyte():
    with pool() as orch:
        results = list(orch.map(megabyte, range(2_000)))
    assert all(r == megabyte(i) for i, r in enumerate(results))


# -- ends that reach every waiting call ---------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_close_from_another_thread_ends_every_call(how, tmp_path):
    orch = pool()
    waiting, errors = compute_in_thread(orch, tmp_path / "started", 30)
    futures = [orch.submit(time.sleep, 30) for _ in range(4)]  # queued behind the compute
    closer = threading.Thread(
        target=orch.close if how == "close" else lambda: orch.shutdown(wait=False)
    )
    closer.start()
    closer.join(60)
    waiting.join(60)
    assert not closer.is_alive() and not waiting.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ox.TaskError)
    assert "closed" in str(errors[0])
    _, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    for future in futures:
        assert future.cancelled() or isinstance(future.exception(), ox.TaskError)


def test_a_dead_manager_fails_every_waiting_call_and_every_later_one(monkeypatch):
    with pool() as orch:
        assert orch.compute(inc(1)) == 2
        backend = orch._backend
        original = backend._enforce_deadlines

        def broken():
            if any(worker.outstanding for worker in backend._workers):  # while the call waits
                raise MemoryError("simulated")
            original()

        monkeypatch.setattr(backend, "_enforce_deadlines", broken)
        # The call ends with the manager's error: for the jobs it was given, or at its next
        # submit if the manager died first.
        with pytest.raises(ox.OrchestrixError, match="manager failed: MemoryError: simulated"):
            orch.compute([sleep_for(2, i) for i in range(4)])
        with pytest.raises(ox.OrchestrixError, match="MemoryError: simulated"):
            orch.compute(inc(2))
        with pytest.raises(ox.OrchestrixError, match="MemoryError"):
            orch.submit(increment, 1)


def test_workers_that_cannot_start_fail_the_run_with_their_own_error(tmp_path):
    # A file where the workers' log directory goes: every worker fails as it sets up its log.

    (tmp_path / "workers_log").write_text("not a directory")
    spawned = []
    launcher_spawn = processes.Launcher.spawn

    def counting(self):
        spawned.append(1)
        return launcher_spawn(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processes.Launcher, "spawn", counting)
        with pool(out_dir=str(tmp_path)) as orch:
            with pytest.raises(ox.WorkerCrashedError) as info:
                orch.compute([inc(i) for i in range(4)])
            assert "exit as soon as they start" in str(info.value)
            assert "FileExistsError" in str(info.value)  # the worker's own traceback
            assert info.value.key in {inc(i).key for i in range(4)}
            with pytest.raises(ox.OrchestrixError, match="exit as soon as they start"):
                orch.submit(increment, 1)
    assert len(spawned) <= 2 + mp_backend.MAX_STARTUP_FAILURES  # not a respawn loop


# -- taking a result ----------------------------------------------------------------------------


def big_array(n):
    import numpy as np

    return np.full(n, 7.0)


def test_a_dump_file_gone_fails_the_call_that_takes_it():
    with pool() as orch:
        dump_dir = orch._backend.dump_dir
        real = mp_backend.materialize

        def remove_dumps_then_open(value):
            for path in glob.glob(os.path.join(dump_dir, "*")):
                os.unlink(path)
            return real(value)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(orch._backend, "materialize", remove_dumps_then_open)
            future = orch.submit(big_array, 100_000)
            with pytest.raises(ox.TaskError, match="could not be read") as info:
                future.result(timeout=60)
            assert isinstance(info.value.__cause__, OSError)
            with pytest.raises(OSError):
                orch.compute(ox.task(big_array)(100_000))
        assert orch.compute(inc(1)) == 2  # the pool goes on


class Unloadable:
    """Pickles in the worker, cannot be rebuilt in the caller."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    if multiprocessing.parent_process() is None:  # the caller
        raise ValueError("not here")
    return Unloadable()


def make_unloadable():
    return Unloadable()


def test_a_result_that_cannot_be_unpickled_fails_that_call():
    with pool() as orch:
        with pytest.raises(ox.TaskError, match="could not be unpickled: ValueError: not here"):
            orch.compute(ox.task(make_unloadable)())
        with pytest.raises(ox.TaskError, match="could not be unpickled"):
            orch.submit(make_unloadable).result(timeout=60)
        assert orch.compute(inc(1)) == 2


# -- callbacks ----------------------------------------------------------------------------------


def test_a_blocking_done_callback_does_not_freeze_dispatch():
    release = threading.Event()
    with pool() as orch:
        first = orch.submit(increment, 1)
        first.add_done_callback(lambda _: release.wait(60))
        assert first.result(timeout=60) == 2
        # The callback blocks; results and dispatch go on for every other call.
        assert orch.compute([inc(i) for i in range(20)]) == list(range(1, 21))
        assert orch.submit(increment, 5).result(timeout=60) == 6
        release.set()


def test_a_done_callback_may_compute():
    got: list = []
    done = threading.Event()
    with pool() as orch:

        def callback(future):
            got.append(orch.compute(inc(future.result())))
            done.set()

        orch.submit(increment, 1).add_done_callback(callback)
        assert done.wait(60)
    assert got == [3]


# -- the caller killed --------------------------------------------------------------------------


CALLER = textwrap.dedent(
    """
    import sys, time
    import orchestrix as ox
    from tasks import sleep_for

    with ox.Orchestrator(mode="multiprocessing", nb_workers=2, mp_mode=sys.argv[1]) as orch:
        futures = [orch.submit(time.sleep, 600) for _ in range(2)]
        print("running", flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("method", METHODS)
def test_a_caller_killed_leaves_no_process(method, tmp_path):
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, *sys.path])}
    caller = subprocess.Popen(
        [sys.executable, str(script), method], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert caller.stdout is not None
        assert caller.stdout.readline().strip() == "running"
        deadline = time.monotonic() + 30
        family = psutil.Process(caller.pid).children(recursive=True)
        while len(family) < 2:  # the workers, and the forkserver and resource tracker if any
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
            family = psutil.Process(caller.pid).children(recursive=True)
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(30)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"left running: {[(p.pid, _cmdline(p)) for p in alive]}"
    finally:
        if caller.poll() is None:
            caller.kill()
        for child in psutil.Process().children(recursive=True):
            if child.pid != caller.pid and "caller.py" in " ".join(_cmdline(child)):
                child.kill()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


_SEQUENTIAL_TASK_RUNNING = threading.Event()


@ox.task
def _signal_then_sleep(seconds, value):
    _SEQUENTIAL_TASK_RUNNING.set()
    time.sleep(seconds)
    return value


def test_close_from_another_thread_ends_a_sequential_compute():
    # The closer waits for a task to be running: closing before the compute starts is
    # a different case (the compute is refused at once, like a submit after shutdown).
    _SEQUENTIAL_TASK_RUNNING.clear()
    orch = ox.Orchestrator(mode="sequential")
    errors: list[BaseException] = []

    def compute():
        try:
            orch.compute([_signal_then_sleep(0.2, i) for i in range(100)])
        except BaseException as exc:  # noqa: BLE001 - what the waiting call got
            errors.append(exc)

    def close_soon():
        _SEQUENTIAL_TASK_RUNNING.wait(30)
        orch.close()

    closer = threading.Thread(target=close_soon)
    closer.start()
    waiting = threading.Thread(target=compute)
    waiting.start()
    waiting.join(60)
    closer.join(60)
    assert not waiting.is_alive(), "the compute went on after close"
    assert len(errors) == 1 and isinstance(errors[0], ox.TaskError), errors
    assert "closed" in str(errors[0])


def test_a_compute_after_close_is_refused_at_once():
    orch = ox.Orchestrator(mode="sequential")
    orch.close()
    with pytest.raises(RuntimeError, match="closed"):
        orch.compute([inc(1)])


CTRL_C = textwrap.dedent(
    """
    import time
    import orchestrix as ox

    @ox.task
    def nap(x):
        time.sleep(60)
        return x

    @ox.task
    def interrupts_itself(x):
        raise KeyboardInterrupt("the task's own")

    with ox.Orchestrator(mode="sequential") as orch:
        try:
            orch.compute(interrupts_itself(1))
        except ox.TaskError as error:
            print("task error:", type(error.__cause__).__name__, flush=True)
        print("ready", flush=True)
        try:
            orch.compute(nap(1))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sequential_tells_a_real_ctrl_c_from_a_tasks_keyboard_interrupt(tmp_path, sigint):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, *sys.path])}

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started in the background

    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=ignore_sigint if sigint == "ignored" else None,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "task error: KeyboardInterrupt"
        assert child.stdout.readline().strip() == "ready"
        if sigint == "ignored":
            child.kill()  # no Ctrl-C can reach it: only the first half applies
            return
        time.sleep(0.5)  # in the nap
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline().strip() == "interrupted"
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
