"""Canary runs, resume after a crash (the job killed with SIGKILL in a child process), the result
store, and the callbacks. Parametrised over sequential, multiprocessing and local_dask."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest

import durable_job
import orchestrix as ox
from durable_helpers import (
    TESTS_DIR,
    assert_same_results,
    counts,
    kill,
    read_status,
    rows,
    spawn,
    stored,
    wait_for,
)
from orchestrix.engine.store import ResultStore
from tasks import add, fail, inc, record, recorded

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
    by_state = counts(out)
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
    child = spawn([os.path.join(TESTS_DIR, "durable_job.py"), json.dumps(durable), out, log])
    try:
        wait_for(lambda: stored(results) >= 40, timeout=120, what="40 finished results")
    finally:
        descendants = kill(child)
    _, alive = psutil.wait_procs(descendants, timeout=30)
    assert not alive, f"the killed run left processes behind: {alive}"
    finished = stored(results)
    assert finished < durable_job.TASKS, "the run finished before it was killed"
    status = read_status(out)
    assert status["alive"] is False
    # The journal's writer outlived its caller: it wrote what it had and marked the run killed.
    assert status["run"]["outcome"] == "killed" and status["run"]["ended"] is None
    before = len(recorded(log))

    values = durable_job.run(durable, out, log)

    rerun = recorded(log)[before:]
    # One file per final task; the temporary file of a write the kill cut short is gone.
    assert len(os.listdir(results)) == durable_job.TASKS
    assert len(rerun) == 2 * (durable_job.TASKS - finished), "only unfinished tasks ran again"
    assert len(set(rerun)) == len(rerun), "no task ran twice in the rerun"
    assert_same_results(values, durable_job.expected())
    status = read_status(out)
    finals = rows(out, "name = 'finish'")
    assert len(finals) == durable_job.TASKS and {row["state"] for row in finals} == {"DONE"}
    assert status["loaded"] == finished
    # A third run computes nothing at all.
    values = durable_job.run(durable, out, log)
    assert len(recorded(log)) == before + len(rerun)
    assert_same_results(values, durable_job.expected())


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


def test_result_store_removes_what_dead_writers_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"finish-1.tmp-{dead.pid}-0123abcd"
    ours = tmp_path / f"finish-2.tmp-{os.getpid()}-0123abcd"  # a live writer's: kept
    orphan.write_bytes(b"half")
    ours.write_bytes(b"half")
    ResultStore(str(tmp_path))
    assert not orphan.exists() and ours.exists()
