"""The task journal: states in every mode, what a kill -9 leaves, the status command, the
journal's writer process. Parametrised over sequential, multiprocessing and local_dask."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import orchestrix as ox
from durable_helpers import DURABLE, child_env, counts, kill, rows, spawn, wait_for
from orchestrix.journal.journal import JOURNAL_FILE
from orchestrix.journal.status import format_status, read_status
from tasks import add, fail, inc, nap, wait_file

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
            wait_for(lambda: counts(out)["RUNNING"] >= 1, what="a RUNNING task")
            wait_for(lambda: counts(out)["DONE"] == 4, what="the naps DONE")
            status = read_status(out)
            assert status["alive"] is True
            assert status["total"] == 5
            (running,) = status["running"]  # the task that waits for the test
            assert running["name"] == "wait_file" and running["worker"]
            assert "running longest:\n  wait_file (wait_file-" in format_status(status)
        finally:
            release.touch()
            thread.join()
    assert read_status(out)["alive"] is False
    assert counts(out)["DONE"] == 5


def test_canary_tasks_are_testing_while_they_run(parallel, tmp_path):
    out = str(tmp_path / "run")
    release = tmp_path / "release"
    with ox.Orchestrator(**parallel, out_dir=out, canary=1) as orch:
        work = [wait_file(release)] + [inc(i) for i in range(5)]
        thread = threading.Thread(target=orch.compute, args=(work,))
        thread.start()
        try:
            wait_for(lambda: counts(out)["TESTING"] == 1, what="the canary task TESTING")
            assert counts(out)["REGISTERED"] == 5  # the rest waits for the canary
        finally:
            release.touch()
            thread.join()
    assert counts(out)["DONE"] == 6


def test_tasks_running_when_the_run_stops_are_killed(parallel, tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(**parallel, out_dir=out) as orch:
        for _ in orch.as_completed([inc(0), nap(30)]):  # one each on the two workers
            break  # stop after the first result: the nap is still running
    by_state = counts(out)
    assert by_state["KILLED"] == 1 and by_state["DONE"] == 1, by_state


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


def test_keep_journal_shows_every_orchestrator_of_a_pipeline(tmp_path):
    """A pipeline that runs several orchestrators in one out_dir (CARS: one per step) sees all
    their tasks in status; the next run without keep_journal starts afresh."""
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute([inc(1), inc(2)])
    for step in (3, 4):
        with ox.Orchestrator(mode="sequential", out_dir=out, keep_journal=True) as orch:
            orch.compute(inc(step))
    status = read_status(out)
    assert status["counts"]["DONE"] == 4
    assert status["runs"] == 3
    assert "the journal holds 3 runs" in format_status(status)
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute(inc(5))
    status = read_status(out)
    assert (status["counts"]["DONE"], status["runs"]) == (1, 1)
    assert "journal holds" not in format_status(status)


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
    child = spawn(["-c", script])
    try:
        wait_for(lambda: counts(out, quiet=True)["DONE"] >= 1000, what="tasks DONE")
        time.sleep(0.3)  # in the middle of writing batches
    finally:
        kill(child, with_descendants=True)
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
    assert counts(out)["RUNNING"] == 0


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
        env=child_env(),
    )
    text = result.stdout
    assert "tasks: 4 (DONE 3, FAILED 1, 75% done)" in text
    assert "fail (fail-" in text and "ValueError: no space left" in text
    assert "ended at" in text and "ALIVE" not in text
    assert any(line.startswith("inc ") and " 3 " in line for line in text.splitlines())
    as_json = subprocess.run(
        [sys.executable, "-m", "orchestrix", "status", out, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
    )
    assert json.loads(as_json.stdout)["counts"]["FAILED"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "orchestrix", "status", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert missing.returncode == 2 and "no journal" in missing.stderr


def test_journal_codec_round_trip():
    from orchestrix import records as ev
    from orchestrix.graph.factorize import WorkUnit
    from orchestrix.graph.tasks import TaskNode
    from orchestrix.journal import codec

    def unit(*keys):
        return WorkUnit(tuple(TaskNode.call(len, f"n{key}", (), {}, key) for key in keys), ())

    chain, single = unit("a", "b"), unit("c")
    failure = ev.FailureRecord(key="b", name="nb", worker="w1", error="E: x", traceback=None)
    runs = [
        ev.UnitRun(chain, 12.5, [0.5], False, None),
        ev.UnitRun(single, 13.0, [1.0], True, None),
    ]
    events = [
        ev.Registered([chain, single], canary=True),
        ev.Started([chain], worker="w1", when=12.5),
        ev.Recorded(worker="w1", peak_rss_mb=30.0, runs=runs),
        failure,
        ev.Retried(single),
        ev.Stopped([chain, single]),
        ev.Loaded([("d", "nd")]),
    ]
    assert {type(event) for event in events} == set(ev.EVENT_TYPES)  # every kind is covered
    flat = []
    for event in events:
        codec.ENCODERS[type(event)](flat.append, event)
    assert all(item is None or type(item) in (str, int, float, bool) for item in flat)
    # exactly what orchestrix 0.1.0's encoder wrote for the same events (its tuples): the wire
    # format did not change when records replaced them
    assert flat == [
        "G", 1, "a", "na", "b", "nb", "c", "nc", None,
        "S", "w1", 12.5, "a", "b", None,
        "R", "w1", 30.0, 2, 12.5, False, 2, "a", "b", 1, 0.5, 13.0, True, 1, "c", 1, 1.0,
        "F", "b", "nb", "w1", "E: x",
        "T", "c", None,
        "K", "a", "b", "c", None,
        "L", "d", "nd", None,
    ]  # fmt: skip
    registered, started, recorded, failed, retried, stopped, loaded = codec.decode(flat)
    assert registered == codec.TasksRegistered(
        tasks=[("a", "na"), ("b", "nb"), ("c", "nc")], canary=1
    )
    assert started == codec.TasksStarted(keys=["a", "b"], worker="w1", when=12.5)
    assert recorded.worker == "w1" and recorded.peak_rss_mb == 30.0
    first, second = recorded.runs
    assert (first.keys, first.started, first.walls, first.ok) == (["a", "b"], 12.5, [0.5], False)
    assert (second.keys, second.started, second.walls, second.ok) == (["c"], 13.0, [1.0], True)
    assert failed == ev.FailureRecord(key="b", name="nb", worker="w1", error=None, traceback="E: x")
    assert retried == codec.TasksRetried(keys=["c"])
    assert stopped == codec.TasksStopped(keys=["a", "b", "c"])
    assert loaded == ev.Loaded(tasks=[("d", "nd")])


def test_journal_decodes_a_batch_of_an_earlier_version():
    """A batch in the layout that earlier versions sent their writer still decodes: records
    replaced the tuples, the tags and the wire layout did not change."""
    import pickle

    from orchestrix.journal import codec

    flat = [
        "G",
        0,
        "k-1",
        "n",
        None,
        "S",
        "w",
        1.0,
        "k-1",
        None,
        "R",
        "w",
        None,
        1,
        1.0,
        True,
        1,
        "k-1",
        1,
        0.5,
        "F",
        "k-2",
        "m",
        "w",
        "E: x",
        "T",
        "k-3",
        None,
        "K",
        None,
        "L",
        None,
    ]
    events = codec.decode(pickle.loads(pickle.dumps(flat, protocol=pickle.HIGHEST_PROTOCOL)))
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["TasksRegistered", "TasksStarted", "TasksRecorded", "FailureRecord",
                     "TasksRetried", "TasksStopped", "Loaded"]  # fmt: skip
    assert events[2].runs[0].keys == ["k-1"] and events[3].traceback == "E: x"


def test_journal_written_in_the_caller_without_a_writer_process(tmp_path, monkeypatch, caplog):
    from orchestrix.journal import journal

    def no_process(*args, **kwargs):
        raise OSError("no python here")

    monkeypatch.setattr(journal.subprocess, "Popen", no_process)
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        orch.compute([inc(i) for i in range(5)])
    assert "no writer process" in caplog.text
    assert counts(out)["DONE"] == 5 and read_status(out)["run"]["outcome"] == "closed"


def test_a_dead_writer_does_not_stop_the_run(tmp_path, caplog):
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch:
        writer = orch.monitor.consumers[0]._process
        writer.kill()
        writer.wait()
        assert orch.compute([inc(i) for i in range(50)]) == list(range(1, 51))
        time.sleep(0.5)  # a batch goes to the dead writer
        assert orch.compute(inc(100)) == 101
    assert "journal" in caplog.text  # said, once, not raised
