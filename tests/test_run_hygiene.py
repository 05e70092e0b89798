"""A run's files and resources (issue 12): a corrupt journal is a clear error, a failed
construction leaks nothing, each orchestrator's log holds its own run's records, and a stalled
journal writer cannot hold ``close``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import orchestrix as ox
from orchestrix.backends.pool import processes as mp_pool
from orchestrix.journal import journal
from orchestrix.journal.journal import JOURNAL_FILE, Journal
from tasks import crash_once, inc

MP = {"mode": "multiprocessing", "nb_workers": 2}


def _corrupt(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, JOURNAL_FILE), "wb") as stream:
        stream.write(b"SQLite format 3\0" + bytes(range(256)) * 20)


# -- a corrupt journal ---------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resume", [False, True])
def test_a_corrupt_journal_is_an_error_naming_it_and_what_to_do(tmp_path, resume):
    _corrupt(tmp_path)
    with pytest.raises(ox.OrchestrixError) as info:
        ox.Orchestrator(mode="sequential", out_dir=str(tmp_path), resume=resume)
    message = str(info.value)
    assert str(tmp_path / JOURNAL_FILE) in message and "move it away" in message
    os.replace(tmp_path / JOURNAL_FILE, tmp_path / "journal.damaged")  # as the error says
    with ox.Orchestrator(mode="sequential", out_dir=str(tmp_path), resume=resume) as orch:
        assert orch.compute(inc(1)) == 2


@pytest.mark.timeout(60)
def test_status_of_a_corrupt_journal_says_what_to_do(tmp_path):
    _corrupt(tmp_path)
    command = [sys.executable, "-m", "orchestrix", "status", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=50)
    assert result.returncode != 0
    assert "OrchestrixError" in result.stderr and "Traceback" not in result.stderr
    assert str(tmp_path / JOURNAL_FILE) in result.stderr and "move it away" in result.stderr


# -- a failed construction leaks nothing ---------------------------------------------------


def _resources():
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    handlers = list(logging.getLogger("orchestrix").handlers) + list(logging.getLogger().handlers)
    return sorted(os.listdir("/proc/self/fd")), handlers, children


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory that cannot be written, also by root: a read-only tmpfs (else chmod)."""
    target = tmp_path / "read-only"
    target.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)]
    try:
        mounted = subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions, and mounting is not permitted here")
        target.chmod(0o500)
    yield target
    if mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _spawn_once(monkeypatch):
    """Workers start once: the second start fails (a backend that fails while starting)."""
    spawn = mp_pool.Launcher.spawn
    calls = []

    def failing(self):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("cannot start a worker (injected)")
        return spawn(self)

    monkeypatch.setattr(mp_pool.Launcher, "spawn", failing)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sequential", "multiprocessing"])
@pytest.mark.parametrize(
    "cause", ["out_dir is a file", "read-only", "corrupt journal", "resume on a corrupt journal"]
)
def test_a_failed_construction_leaks_nothing(tmp_path, request, mode, cause):
    options = {"mode": "sequential"} if mode == "sequential" else dict(MP)
    out = tmp_path / "run"
    if cause == "out_dir is a file":
        out.write_text("")
    elif cause == "read-only":
        out = request.getfixturevalue("read_only_dir")
    else:
        _corrupt(out)
        options["resume"] = cause.startswith("resume")
    before = _resources()
    with pytest.raises((ox.OrchestrixError, OSError)):
        ox.Orchestrator(**options, out_dir=str(out))
    assert _resources() == before


@pytest.mark.timeout(120)
def test_a_backend_that_fails_to_start_leaks_nothing(tmp_path, monkeypatch):
    ox.Orchestrator(**MP).close()  # what multiprocessing keeps per process (its consumer, arena)
    _spawn_once(monkeypatch)
    before = _resources()
    with pytest.raises(OSError, match="injected"):
        ox.Orchestrator(**MP, out_dir=str(tmp_path))
    fds, handlers, children = _resources()
    assert (fds, handlers) == before[:2]
    psutil.wait_procs([psutil.Process(pid) for pid in children - before[2]], timeout=10)
    assert _resources() == before


# -- one log per run -----------------------------------------------------------------------


def _raise(event):
    raise RuntimeError("callback of run B")


@pytest.mark.timeout(120)
def test_each_log_holds_only_its_own_runs_records(tmp_path):
    marker = str(tmp_path / "crashed")
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    orch_a = ox.Orchestrator(**MP, out_dir=a_dir, retries=1)
    orch_b = ox.Orchestrator(mode="sequential", out_dir=b_dir, on_task_done=_raise)
    try:
        future = orch_a.submit(crash_once.func, marker, "a")  # its retry is logged by A's pool
        assert orch_b.compute(inc(1)) == 2  # its callback's error is logged by B's consumer
        assert future.result(timeout=60) == "a"
        assert orch_a.compute(inc(10)) == 11 and orch_b.compute(inc(20)) == 21
        logging.getLogger("orchestrix").warning("a record of no run")
    finally:
        orch_a.close()
        orch_b.close()
    log_a = Path(a_dir, "orchestrix.log").read_text()
    log_b = Path(b_dir, "orchestrix.log").read_text()
    assert "retrying (1/1)" in log_a and "retrying" not in log_b
    assert "callback of run B" in log_b and "callback of run B" not in log_a
    for own, other, log in ((a_dir, b_dir, log_a), (b_dir, a_dir, log_b)):
        assert log.count("orchestrator started") == 1 and log.count("run summary") == 1
        assert own in log and other not in log
        assert "a record of no run" in log  # an application's record reaches every open log


# -- a stalled journal writer --------------------------------------------------------------


def _journal_of(orch):
    (found,) = [t for t in orch.monitor.consumers if isinstance(t, Journal)]
    return found


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tasks", [3, 3000])  # the writer's pipe: free, and full
def test_a_stopped_journal_writer_does_not_hold_close(tmp_path, caplog, monkeypatch, tasks):
    monkeypatch.setattr(journal, "CLOSE_SECONDS", 1.0, raising=False)
    orch = ox.Orchestrator(mode="sequential", out_dir=str(tmp_path))
    writer = _journal_of(orch)._process
    os.kill(writer.pid, signal.SIGSTOP)
    try:
        assert orch.compute([inc(i) for i in range(tasks)]) == list(range(1, tasks + 1))
        time.sleep(2 * journal.BATCH_SECONDS)  # the journal's thread sends (and may block)
        with caplog.at_level(logging.WARNING, logger="orchestrix"):
            orch.close()
    finally:
        if writer.poll() is None:  # the fix is missing: free the test from the stopped writer
            os.kill(writer.pid, signal.SIGCONT)
    assert writer.poll() is not None  # the writer is gone, not left stopped
    (warning,) = [r.getMessage() for r in caplog.records if "journal lags" in r.getMessage()]
    assert str(writer.pid) in warning and str(tmp_path / JOURNAL_FILE) in warning
    assert "task events were never handed to it" in warning
    assert "journal failed" not in caplog.text and "could not end" not in caplog.text
