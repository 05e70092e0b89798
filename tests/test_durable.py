"""Durable runs: the task journal, canary runs, resume after a crash, status and callbacks.

Parametrised over sequential, multiprocessing and local_dask; the resume and kill tests run the
job in a child process and kill it with SIGKILL, as a crash or an OOM kill would.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import durable_job
import orchestrix as ox
from orchestrix.backends import AVAILABLE
from orchestrix.journal import JOURNAL_FILE
from orchestrix.status import read_status
from orchestrix.store import ResultStore
from tasks import add, fail, inc, nap, record, recorded, wait_file

DURABLE = {
    "sequential": {"mode": "sequential"},
    "multiprocessing": {"mode": "multiprocessing", "nb_workers": 2},
}
if "local_dask" in AVAILABLE:
    DURABLE["local_dask"] = {"mode": "local_dask", "nb_workers": 2}
PARALLEL = [name for name in DURABLE if name != "sequential"]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(os.path.dirname(TESTS_DIR), "src")


@pytest.fixture(params=list(DURABLE))
def durable(request):
    return dict(DURABLE[request.param])


@pytest.fixture(params=PARALLEL)
def parallel(request):
    return dict(DURABLE[request.param])


def rows(out_dir, where="1"):
    connection = sqlite3.connect(os.path.join(out_dir, JOURNAL_FILE))
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute(f"SELECT * FROM tasks WHERE {where}")]
    finally:
        connection.close()


def states(out_dir):
    return {row["key"]: row["state"] for row in rows(out_dir)}


def wait_for(condition, timeout=60.0, what="condition"):
    """Wait for a state of another process or thread (a liveness limit, not a speed test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the journal ---------------------------------------------------------------------------------


def test_journal_records_every_task(durable, tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(**durable, out_dir=out) as orch:
        chains = [inc(inc(i)) for i in range(20)]
        total = add(chains[0], chains[1])
        assert orch.compute([*chains, total]) == [i + 2 for i in range(20)] + [5]
    found = rows(out)
    assert len(found) == 41  # 40 incs (fused in pairs) and the add
    for row in found:
        assert row["state"] == "DONE", row
        assert row["attempts"] == 1
        assert row["worker"] and row["started"] <= row["ended"]
        assert row["peak_rss_mb"] > 0 and row["error"] is None
    status = read_status(out)
    assert status["alive"] is False and status["run"]["outcome"] == "closed"
    assert status["counts"]["DONE"] == 41


def test_failed_task_has_its_error_and_downstream_stays_registered(durable, tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(**durable, out_dir=out) as orch:
        bad = fail("the disk is full")
        with pytest.raises(ox.TaskError):
            orch.compute(inc(bad))
    by_name = {row["name"]: row for row in rows(out)}
    assert by_name["fail"]["state"] == "FAILED"
    assert "ValueError: the disk is full" in by_name["fail"]["error"]
    assert by_name["inc"]["state"] == "REGISTERED"  # it never ran
    failed = read_status(out)["failed"]
    assert [(f["name"], f["error"]) for f in failed] == [("fail", "ValueError: the disk is full")]


def test_retry_returns_to_registered_then_runs_again(parallel, tmp_path):
    from tasks import kill_worker_once

    out = str(tmp_path / "run")
    with ox.Orchestrator(**parallel, out_dir=out, retries=1) as orch:
        assert orch.compute(kill_worker_once(str(tmp_path / "marker"), 7)) == 7
    (row,) = rows(out)
    assert row["state"] == "DONE"
    if parallel["mode"] == "multiprocessing":
        assert row["attempts"] == 2  # sent twice: the first worker died
    else:  # a dask worker killed as it starts a task may die before its start event leaves it
        assert row["attempts"] in (1, 2)


def test_states_are_visible_while_running(parallel, tmp_path):
    out = str(tmp_path / "run")
    release = tmp_path / "release"
    with ox.Orchestrator(**parallel, out_dir=out) as orch:
        thread = threading.Thread(
            target=orch.compute, args=([nap(0.2, i) for i in range(4)] + [wait_file(release)],)
        )
        thread.start()
        try:
            wait_for(lambda: _counts(out)["RUNNING"] >= 1, what="a RUNNING task")
            status = read_status(out)
            assert status["alive"] is True
            assert status["total"] == 5
        finally:
            release.touch()
            thread.join()
    assert read_status(out)["alive"] is False
    assert _counts(out)["DONE"] == 5


def test_canary_tasks_are_testing_while_they_run(parallel, tmp_path):
    out = str(tmp_path / "run")
    release = tmp_path / "release"
    with ox.Orchestrator(**parallel, out_dir=out, canary=1) as orch:
        work = [wait_file(release)] + [inc(i) for i in range(5)]
        thread = threading.Thread(target=orch.compute, args=(work,))
        thread.start()
        try:
            wait_for(lambda: _counts(out)["TESTING"] == 1, what="the canary task TESTING")
            assert _counts(out)["REGISTERED"] == 5  # the rest waits for the canary
        finally:
            release.touch()
            thread.join()
    assert _counts(out)["DONE"] == 6


def test_tasks_running_when_the_run_stops_are_killed(parallel, tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(**parallel, out_dir=out) as orch:
        for _ in orch.as_completed([inc(0), nap(30)]):  # one each on the two workers
            break  # stop after the first result: the nap is still running
    counts = _counts(out)
    assert counts["KILLED"] == 1 and counts["DONE"] == 1, counts


def test_a_new_run_starts_a_new_journal_unless_resumed(tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute([inc(1), inc(2)])
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute(inc(3))
    assert len(rows(out)) == 1
    with ox.Orchestrator(mode="sequential", out_dir=out, resume=True) as orch:
        orch.compute(inc(4))
    assert len(rows(out)) == 2


def test_no_journal_without_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ox.Orchestrator(mode="sequential") as orch:
        orch.compute(inc(1))
    assert os.listdir(tmp_path) == []
    assert not any(t.name == "orchestrix-journal" for t in threading.enumerate())


@pytest.mark.parametrize("name", ["sequential", "multiprocessing"])
def test_journal_survives_kill_9(name, tmp_path):
    """The caller and the journal's writer are killed together while thousands of task states
    a second are written: the journal is still a sound database, status reads it."""
    out = str(tmp_path / "run")
    script = (
        "import orchestrix as ox, tasks\n"
        f"with ox.Orchestrator(**{DURABLE[name]!r}, out_dir={out!r}) as orch:\n"
        "    while True:\n"
        "        orch.compute([tasks.inc(i) for i in range(2000)])\n"
    )
    child = _spawn(["-c", script])
    try:
        wait_for(lambda: _counts(out, quiet=True)["DONE"] >= 1000, what="tasks DONE")
        time.sleep(0.3)  # in the middle of writing batches
    finally:
        _kill(child, with_descendants=True)
    connection = sqlite3.connect(os.path.join(out, JOURNAL_FILE))
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    status = read_status(out)
    assert status["alive"] is False
    assert status["run"]["ended"] is None  # it never closed
    assert status["total"] >= 2000
    # The next run settles what the dead one left running.
    with ox.Orchestrator(mode="sequential", out_dir=out, resume=True):
        pass
    assert _counts(out)["RUNNING"] == 0


# -- canary --------------------------------------------------------------------------------------


def test_canary_failure_stops_before_the_rest(durable, tmp_path):
    log = str(tmp_path / "log")
    out = str(tmp_path / "run")
    with ox.Orchestrator(**durable, out_dir=out, canary=2) as orch:
        work = [record(log, "first"), inc(fail("bad tile"))] + [
            record(log, f"rest-{i}") for i in range(20)
        ]
        with pytest.raises(ox.CanaryError) as caught:
            orch.compute(work)
    error = caught.value
    assert isinstance(error, ox.TaskError)
    assert isinstance(error.__cause__, ox.TaskError)
    assert "canary" in str(error) and "bad tile" in str(error)
    assert not [line for line in recorded(log) if line.startswith("rest")]
    by_state = _counts(out)
    assert by_state["REGISTERED"] >= 20  # the rest was never scheduled
    canary_rows = rows(out, "canary = 1")
    assert {row["name"] for row in canary_rows} == {"record", "fail", "inc"}


def test_canary_success_runs_everything_once(durable, tmp_path):
    log = str(tmp_path / "log")
    work = [record(log, i) for i in range(12)] + [add(inc(1), inc(2))]
    with ox.Orchestrator(**durable, canary=3) as orch:
        assert orch.compute(work) == [*range(12), 5]
    assert sorted(map(int, recorded(log))) == list(range(12))


# -- resume --------------------------------------------------------------------------------------


def test_resume_after_sigkill_recomputes_only_unfinished_tasks(durable, tmp_path):
    out = str(tmp_path / "run")
    log = str(tmp_path / "executions")
    results = os.path.join(out, "results")
    child = _spawn([os.path.join(TESTS_DIR, "durable_job.py"), json.dumps(durable), out, log])
    try:
        wait_for(lambda: _stored(results) >= 40, timeout=120, what="40 stored results")
    finally:
        descendants = _kill(child)
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, f"the killed run left processes behind: {alive}"
    stored = _stored(results)
    assert stored < durable_job.TASKS, "the run finished before it was killed"
    status = read_status(out)
    assert status["alive"] is False
    # The journal's writer outlived its caller: it wrote what it had and marked the run killed.
    assert status["run"]["outcome"] == "killed" and status["run"]["ended"] is None
    before = len(recorded(log))

    values = durable_job.run(durable, out, log)

    rerun = recorded(log)[before:]
    # One file per final task; the temporary file of a write the kill cut short is gone.
    assert len(os.listdir(results)) == durable_job.TASKS
    assert len(rerun) == 2 * (durable_job.TASKS - stored), "only unfinished tasks ran again"
    assert len(set(rerun)) == len(rerun), "no task ran twice in the rerun"
    _assert_same_results(values, durable_job.expected())
    status = read_status(out)
    finals = rows(out, "name = 'finish'")
    assert len(finals) == durable_job.TASKS and {row["state"] for row in finals} == {"DONE"}
    assert status["loaded"] == stored
    # A third run computes nothing at all.
    values = durable_job.run(durable, out, log)
    assert len(recorded(log)) == before + len(rerun)
    _assert_same_results(values, durable_job.expected())


def test_resume_recomputes_a_task_whose_argument_changed(durable, tmp_path):
    out = str(tmp_path / "run")
    log = str(tmp_path / "log")
    with ox.Orchestrator(**durable, out_dir=out, resume=True) as orch:
        assert orch.compute([record(log, i) for i in range(5)]) == list(range(5))
    with ox.Orchestrator(**durable, out_dir=out, resume=True) as orch:
        assert orch.compute([record(log, i) for i in (0, 1, 2, 3, 40)]) == [0, 1, 2, 3, 40]
        assert orch.summary().tasks_loaded == 4
    assert sorted(map(int, recorded(log))) == [0, 1, 2, 3, 4, 40]


def test_resume_keeps_outputs_of_multi_output_tasks(tmp_path):
    from tasks import divmod_task

    out = str(tmp_path / "run")
    for _ in range(2):
        with ox.Orchestrator(mode="sequential", out_dir=out, resume=True) as orch:
            quotient, remainder = divmod_task(17, 5)
            assert orch.compute([remainder, quotient]) == [2, 3]
    assert orch.summary().tasks_loaded == 1


def test_result_store_writes_arrays_as_npy_and_the_rest_pickled(tmp_path):
    store = ResultStore(str(tmp_path))
    array = np.arange(12.0).reshape(3, 4)
    mapped = np.lib.format.open_memmap(str(tmp_path / "m.npy"), "w+", np.int16, (5,))
    mapped[:] = 3
    masked = np.ma.masked_array([1, 2], mask=[False, True])
    values = {
        "a-1": array,
        "m-2": mapped,
        "o-3": np.array([{"x": 1}], dtype=object),
        "k-4": masked,
        "d-5": {"x": [1, 2]},
        "n/a:6<long" * 40: 7,
    }
    for key, value in values.items():
        store.save(key, value)
    names = sorted(os.listdir(tmp_path))
    assert not [name for name in names if ".tmp-" in name]
    assert "a-1.npy" in names and "m-2.npy" in names and "o-3.pkl" in names
    assert "k-4.pkl" in names and "d-5.pkl" in names
    for key, value in values.items():
        assert store.contains(key)
        loaded = store.load(key)
        if isinstance(value, np.ma.MaskedArray):
            assert loaded.mask.tolist() == value.mask.tolist()
        elif isinstance(value, np.ndarray):
            assert type(loaded) is np.ndarray or value.dtype.hasobject
            assert loaded.tolist() == value.tolist()
        else:
            assert loaded == value
    assert not store.contains("missing-0")


def test_a_corrupt_stored_result_names_its_file(tmp_path):
    store = ResultStore(str(tmp_path))
    (tmp_path / "broken-1.npy").write_bytes(b"not an array")
    with pytest.raises(ox.OrchestrixError, match=r"broken-1.*delete that file"):
        store.load("broken-1")


# -- status from the shell -----------------------------------------------------------------------


def test_status_command(tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute([inc(i) for i in range(3)])
        with pytest.raises(ox.TaskError):
            orch.compute(fail("no space left"))
    result = subprocess.run(
        [sys.executable, "-m", "orchestrix", "status", out],
        capture_output=True,
        text=True,
        check=True,
        env=_child_env(),
    )
    text = result.stdout
    assert "tasks: 4 (DONE 3, FAILED 1)" in text
    assert "fail (fail-" in text and "ValueError: no space left" in text
    assert "ended at" in text and "ALIVE" not in text
    assert any(line.startswith("inc ") and " 3 " in line for line in text.splitlines())
    as_json = subprocess.run(
        [sys.executable, "-m", "orchestrix", "status", out, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=_child_env(),
    )
    assert json.loads(as_json.stdout)["counts"]["FAILED"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "orchestrix", "status", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=_child_env(),
    )
    assert missing.returncode == 2 and "no journal" in missing.stderr


# -- callbacks -----------------------------------------------------------------------------------


def test_callbacks(durable, tmp_path):
    events = []
    summaries = []

    def on_task_done(event):
        events.append(event)
        if len(events) == 1:
            raise RuntimeError("the mail server is down")  # logged; the run goes on

    with ox.Orchestrator(**durable, on_task_done=on_task_done, on_run_end=summaries.append) as orch:
        assert orch.compute([inc(inc(i)) for i in range(5)]) == [2, 3, 4, 5, 6]
        with pytest.raises(ox.TaskError):
            orch.compute(fail("tile 7 is corrupt"))
        assert not summaries
    done = [e for e in events if e.state == "DONE"]
    failed = [e for e in events if e.state == "FAILED"]
    assert len(done) == 10 and {e.name for e in done} == {"inc"}
    assert all(e.wall_seconds is not None and e.wall_seconds >= 0 and e.worker for e in done)
    assert len(failed) == 1 and "tile 7 is corrupt" in failed[0].error
    assert len(summaries) == 1 and summaries[0].tasks_done == 10


def test_callbacks_must_be_callable():
    with pytest.raises(TypeError, match="on_task_done must be callable"):
        ox.Orchestrator(mode="sequential", on_task_done="mail me")


def test_config_checks_canary_and_resume():
    with pytest.raises(ox.ConfigError, match="canary"):
        ox.Orchestrator(mode="sequential", canary=-1)
    with pytest.raises(ox.ConfigError, match=r"resume.*out_dir"):
        ox.Orchestrator(mode="sequential", resume=True)


# -- helpers -------------------------------------------------------------------------------------


def _counts(out_dir, quiet=False):
    try:
        return read_status(out_dir)["counts"]
    except ox.OrchestrixError:
        if quiet:
            return dict.fromkeys(("REGISTERED", "TESTING", "RUNNING", "DONE"), 0)
        raise


def _stored(directory):
    try:
        return sum(1 for name in os.listdir(directory) if ".tmp-" not in name)
    except FileNotFoundError:
        return 0


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, SRC_DIR, env.get("PYTHONPATH")]))
    return env


def _spawn(arguments):
    return subprocess.Popen([sys.executable, *arguments], env=_child_env())


def _kill(child, with_descendants=False):
    """SIGKILL the child (as the OOM killer would), and its descendants too if asked; return
    its descendants."""
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    os.kill(child.pid, signal.SIGKILL)
    if with_descendants:
        for process in descendants:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    child.wait()
    return descendants


def _assert_same_results(values, expected):
    assert len(values) == len(expected)
    for value, want in zip(values, expected, strict=True):
        if isinstance(want, np.ndarray):
            assert type(value) is np.ndarray and value.dtype == want.dtype
            assert np.array_equal(value, want)
        else:
            assert value == want


def test_result_store_removes_what_dead_writers_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"finish-1.tmp-{dead.pid}-0123abcd"
    ours = tmp_path / f"finish-2.tmp-{os.getpid()}-0123abcd"  # a live writer's: kept
    orphan.write_bytes(b"half")
    ours.write_bytes(b"half")
    ResultStore(str(tmp_path))
    assert not orphan.exists() and ours.exists()


def test_journal_codec_round_trip():
    from orchestrix.factorize import WorkUnit
    from orchestrix.graph import TaskNode
    from orchestrix.journal_codec import ENCODERS, decode

    def unit(*keys):
        return WorkUnit(tuple(TaskNode.call(len, f"n{key}", (), {}, key) for key in keys), ())

    chain, single = unit("a", "b"), unit("c")
    failure = {"key": "b", "name": "nb", "worker": "w1", "error": "E: x", "traceback": None}
    events = [
        ("registered", [chain, single], True),
        ("started", [chain], "w1", 12.5),
        (
            "recorded",
            "w1",
            30.0,
            [(chain, 12.5, [0.5], False, None), (single, 13.0, [1.0], True, None)],
        ),
        ("failed", failure),
        ("retried", single),
        ("stopped", [chain, single]),
        ("loaded", [("d", "nd")]),
    ]
    flat = []
    for event in events:
        ENCODERS[event[0]](flat.append, event)
    assert all(item is None or isinstance(item, (str, int, float)) for item in flat)
    assert list(decode(flat)) == [
        ("registered", [("a", "na"), ("b", "nb"), ("c", "nc")], 1),
        ("started", ["a", "b"], "w1", 12.5),
        ("recorded", "w1", 30.0, [(["a", "b"], 12.5, [0.5], False), (["c"], 13.0, [1.0], True)]),
        ("failed", {"key": "b", "name": "nb", "worker": "w1", "traceback": "E: x", "error": None}),
        ("retried", ["c"]),
        ("stopped", ["a", "b", "c"]),
        ("loaded", [("d", "nd")]),
    ]


def test_journal_written_in_the_caller_without_a_writer_process(tmp_path, monkeypatch, caplog):
    from orchestrix import journal

    def no_process(*args, **kwargs):
        raise OSError("no python here")

    monkeypatch.setattr(journal.subprocess, "Popen", no_process)
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute([inc(i) for i in range(5)])
    assert "no writer process" in caplog.text
    assert _counts(out)["DONE"] == 5 and read_status(out)["run"]["outcome"] == "closed"


def test_a_dead_writer_does_not_stop_the_run(tmp_path, caplog):
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        writer = orch.monitor.trackers[0]._process
        writer.kill()
        writer.wait()
        assert orch.compute([inc(i) for i in range(50)]) == list(range(1, 51))
        time.sleep(0.5)  # a batch goes to the dead writer
        assert orch.compute(inc(100)) == 101
    assert "journal" in caplog.text  # said, once, not raised
