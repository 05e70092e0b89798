"""The records that cross threads and processes are read by name (orchestrix/records.py)."""

from __future__ import annotations

import pickle

from orchestrix.graph.factorize import WorkUnit
from orchestrix.graph.tasks import TaskNode
from orchestrix.monitoring.callbacks import CallbackConsumer
from orchestrix.monitoring.monitor import Monitor
from orchestrix.records import (
    FailureRecord,
    LabelledTask,
    LabelledUnit,
    Recorded,
    TaskRecord,
    UnitRun,
)
from orchestrix.worker.execute import TaskFailure


def unit(*keys):
    return WorkUnit(tuple(TaskNode.call(len, f"n{key}", (), {}, key) for key in keys), ())


def test_a_chain_that_failed_gives_a_task_record_per_task_that_ran():
    monitor = Monitor()
    chain = unit("a", "b", "c")  # "b" failed, "c" never ran
    monitor.record_units("w1", 0.5, 42.0, [UnitRun(chain, 10.0, [1.0, 2.0], False, None)])
    first, second = monitor.task_records()
    assert type(first) is TaskRecord
    assert first == TaskRecord("a", "na", "w1", 10.0, 1.0, 0.5, 42.0, True)
    assert (second.key, second.start, second.wall, second.ok) == ("b", 11.0, 2.0, False)
    data = monitor.run_data()
    assert data["tasks"]["cpu"] == [0.5, 1.0] and data["tasks"]["ok"] == [True, False]


def test_a_failure_is_one_record_for_the_summary_the_report_and_the_trackers():
    monitor = Monitor()
    posted = []
    monitor.add_consumer(type("Sink", (), {"post": lambda self, event: posted.append(event)})())
    monitor.note_failure(TaskFailure("k", "n", ValueError("bad"), "Traceback: ..."), "w1")
    (failure,) = posted
    assert failure == FailureRecord("k", "n", "w1", "ValueError: bad", "Traceback: ...")
    assert monitor.run_data()["failures"] == [failure._asdict()]  # run.json keeps its dicts
    assert monitor.summary().tasks_failed == 1


def test_callbacks_read_recorded_runs_and_failures_by_name():
    seen = []
    consumer = CallbackConsumer(seen.append)
    labelled = LabelledUnit("b", [LabelledTask("a", "na"), LabelledTask("b", "nb")])
    consumer.post(Recorded("w1", 3.0, [UnitRun(labelled, 5.0, [1.0, 2.0], True, None)]))
    consumer.post(FailureRecord("c", "nc", "w2", "E: x", None))
    consumer.close()
    assert [(e.key, e.state, e.worker, e.started, e.ended) for e in seen] == [
        ("a", "DONE", "w1", 5.0, 6.0),
        ("b", "DONE", "w1", 6.0, 8.0),
        ("c", "FAILED", "w2", None, None),
    ]
    assert seen[-1].error == "E: x"


def test_dask_unit_reports_survive_pickle_and_a_plain_sequence():
    from orchestrix.backends.dask.tasks import UnitReport, UnitStart

    report = UnitReport("k", [["k", "n"]], "w", 1.0, [0.5], 0.9, 12.0, True, None)
    assert pickle.loads(pickle.dumps(report)) == report
    # dask's messages carry it as a list: the caller rebuilds it by its one definition
    assert UnitReport._make(list(report)).cpu_per_wall == 0.9
    assert UnitStart._make(["k", [["k", "n"]], "w", 2.0]).when == 2.0


def test_the_task_records_a_run_keeps_are_not_walked_by_the_collector():
    # A run keeps a record per task: a tracked one each would make every full collection walk
    # them all (the caller's cost per task would grow with the run, as in issue 12).
    import gc

    monitor = Monitor()
    runs = [UnitRun(unit(f"k{i}"), 1.0, [0.5], True, None) for i in range(1000)]
    monitor.record_units("w1", 0.5, 42.0, runs)
    gc.collect()
    assert sum(map(gc.is_tracked, monitor.tasks)) == 0
    assert monitor.task_records()[-1].key == "k999"
