"""A task's error names its inputs (the tile, the file): in the message, the journal, ``status``,
the report and the ``on_task_done`` events, on every backend; and the one-line description of a
call (:mod:`orchestrix.graph.inputs`) stays short and safe whatever the arguments are."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import orchestrix as ox
from deadline import within
from durable_helpers import child_env
from orchestrix import failures
from orchestrix.failures import TaskFailure
from orchestrix.graph.inputs import MAX_ARG, MAX_CHARS, describe_call, describe_node, short_repr
from orchestrix.graph.tasks import Ref
from orchestrix.journal.journal import JOURNAL_FILE
from orchestrix.journal.status import format_status, read_status
from tasks import exit_with


@ox.task
def load(i):
    if i == 3:
        raise ValueError(f"tile {i} is corrupt")
    return i


@ox.task
def read(path, *, mode="r"):
    raise OSError(2, "No such file or directory", path)


@ox.task
def smooth(image, sigma=1.0):
    return image


def square_unless_7(x):
    if x == 7:
        raise ZeroDivisionError("seven")
    return x * x


def invert(window):
    if window[0, 0] == 4:
        raise ValueError("bad tile")
    return window


# -- the description of a call --------------------------------------------------------------------


def test_arguments_are_named_after_the_parameters():
    assert describe_node(load(3).node) == "load(i=3)"
    assert describe_node(read("/data/t_0042.tif", mode="rb").node) == (
        "read(path='/data/t_0042.tif', mode='rb')"
    )
    assert describe_call(print, "print", (1, "a")) == "print(1, 'a')"  # no signature: positional

    def varargs(first, *rest):
        return first

    assert describe_call(varargs, "varargs", (1, 2, 3)) == "varargs(1, 2, 3)"


def test_an_upstream_value_is_named_by_its_key():
    node = smooth(load(1), sigma=2.0).node
    assert describe_node(node) == f"smooth(image=<result of {load(1).key}>, sigma=2.0)"
    assert short_repr(Ref("three-ab12", 2)) == "<result 2 of three-ab12>"


def test_a_huge_array_is_shown_by_dtype_and_shape():
    array = np.zeros((4000, 4000))
    assert short_repr(array) == "array(float64, 4000x4000)"
    assert short_repr(np.ones((2, 3), dtype=np.uint8)) == "array(uint8, 2x3)"
    assert short_repr(np.float64(2.5)) == repr(np.float64(2.5))  # a scalar: its value


def test_a_huge_string_is_cut_and_keeps_its_end():
    path = "/data/" + "x" * 10_000_000 + "/t_0042.tif"
    text = short_repr(path)
    assert len(text) <= MAX_ARG
    assert text.startswith("'/data/xxxxxxxx...xxx")
    assert text.endswith("/t_0042.tif' (10,000,017 chars)")


def test_bytes_are_cut():
    assert short_repr(b"abc") == "b'abc'"
    text = short_repr(b"\x00" * 5_000_000)
    assert len(text) <= MAX_ARG and "5,000,000 bytes" in text


def test_a_repr_that_raises_is_not_fatal():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    class BadShape:
        dtype = "float64"

        @property
        def shape(self):
            raise RuntimeError("not computed")

        def __repr__(self):
            raise RuntimeError("nor this")

    assert short_repr(Hostile()) == "<Hostile>"
    assert short_repr(BadShape()) == "<BadShape>"
    assert describe_call(None, "f", (Hostile(),)) == "f(<Hostile>)"


def test_a_container_that_holds_itself():
    items: list = [1, 2]
    items.append(items)
    mapping: dict = {"a": 1}
    mapping["self"] = mapping
    assert short_repr(items) == "[1, 2, [...]]"
    assert short_repr(mapping) == "{'a': 1, 'self': {...}}"


def test_big_and_deep_containers_are_bounded():
    text = short_repr(list(range(1_000_000)))
    assert text == "[0, 1, 2, 3, ... (1,000,000 items)]"
    assert short_repr([[[[[[1]]]]]]) == "[[[[...]]]]"
    assert short_repr((1,)) == "(1,)" and short_repr(set()) == "set()"
    assert len(short_repr({str(i) * 50: i for i in range(100)})) <= MAX_ARG


def test_an_object_with_many_items_is_not_asked_for_its_repr():
    class Table:
        def __len__(self):
            return 10**9

        def __repr__(self):  # would format every row
            raise AssertionError("repr called")

    assert short_repr(Table()) == "<Table of 1,000,000,000 items>"


def test_dataclasses_named_tuples_and_huge_ints():
    @dataclasses.dataclass
    class Tile:
        index: tuple
        data: object

    assert short_repr(Tile((0, 1), np.zeros((512, 512)))) == (
        "Tile(index=(0, 1), data=array(float64, 512x512))"
    )
    assert short_repr(10**5000).startswith("<int of 16,610 bits>")


def test_a_whole_call_is_bounded():
    text = describe_call(None, "f", tuple("y" * 1000 for _ in range(50)), {"k": "v" * 1000})
    assert len(text) == MAX_CHARS and text.startswith("f(") and text.endswith("...)")


def test_describing_a_call_is_cheap():
    """Built only for a failure; still, a failure storm must not cost much (measured ~9 us)."""
    node = read("/data/t_0042.tif", mode="rb").node
    begin = time.perf_counter()
    for _ in range(1000):
        describe_node(node)
    assert time.perf_counter() - begin < 5.0  # a hang guard, not a timing assertion


# -- on every backend ------------------------------------------------------------------------------


def _run_failing(options, out_dir, events, build):
    with ox.Orchestrator(**options, out_dir=out_dir, on_task_done=events.append) as orch:
        with pytest.raises(ox.TaskError) as info:
            within(60, build, orch)
        report = orch.report()
    return info.value, report


def _everywhere(out_dir, report, events, key, inputs):
    """``inputs`` is in the journal's row of ``key``, in status, in the report, in the event."""
    with sqlite3.connect(f"{out_dir}/{JOURNAL_FILE}") as connection:
        (stored,) = connection.execute("SELECT inputs FROM tasks WHERE key = ?", (key,)).fetchone()
    assert stored == inputs
    status = read_status(out_dir)
    assert [task["inputs"] for task in status["failed"]] == [inputs]
    assert f"    on {inputs}" in format_status(status)
    with open(report, encoding="utf-8") as handle:
        assert f"<code>{inputs}</code>" in handle.read()
    failed = [event for event in events if event.state == "FAILED"]
    assert [(event.key, event.inputs) for event in failed] == [(key, inputs)]
    assert all(event.inputs is None for event in events if event.state == "DONE")


def test_a_failed_task_names_its_inputs(options, tmp_path):
    out, events = str(tmp_path / "run"), []
    target = load(3)
    error, report = _run_failing(options, out, events, lambda orch: orch.compute([load(1), target]))
    assert str(error) == (
        f"task 'load' failed on load(i=3): ValueError: tile 3 is corrupt (key {target.key})"
    )
    assert isinstance(error, ValueError) and error.key == target.key  # still typed
    _everywhere(out, report, events, target.key, "load(i=3)")


def test_a_downstream_error_names_the_failed_call(options, tmp_path):
    out, events = str(tmp_path / "run"), []
    failed = load(3)
    error, report = _run_failing(options, out, events, lambda orch: orch.compute(smooth(failed)))
    assert isinstance(error, ox.UpstreamTaskError) and isinstance(error, ValueError)
    assert "upstream task 'load' failed on load(i=3) with ValueError: tile 3" in str(error)
    _everywhere(out, report, events, failed.key, "load(i=3)")


def test_a_path_argument_is_named(options, tmp_path):
    out, events = str(tmp_path / "run"), []
    target = read("/data/t_0042.tif")
    error, _ = _run_failing(options, out, events, lambda orch: orch.compute(target))
    assert isinstance(error, OSError) and error.errno == 2
    assert "failed on read(path='/data/t_0042.tif'): " in str(error)
    assert [e.inputs for e in events if e.state == "FAILED"] == ["read(path='/data/t_0042.tif')"]


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_a_map_item_names_its_item(options, tmp_path, chunksize):
    out, events = str(tmp_path / "run"), []
    results = []

    def run(orch):
        results.extend(orch.map(square_unless_7, range(10), chunksize=chunksize))

    error, _ = _run_failing(options, out, events, run)
    assert results == [x * x for x in range(7)]
    assert isinstance(error, ZeroDivisionError)
    assert "square_unless_7(x=7)" in str(error)
    if chunksize != 1:
        assert "failed on map item 7, square_unless_7(x=7): ZeroDivisionError" in str(error)
    (failed,) = [event for event in events if event.state == "FAILED"]
    assert failed.inputs == "square_unless_7(x=7)"
    status = read_status(out)
    assert "square_unless_7(x=7)" in format_status(status)
    # the error too, whichever of the failure and its unit's record the journal got first
    assert "ZeroDivisionError" in status["failed"][0]["error"]


def test_a_submitted_call_names_its_arguments(options, tmp_path):
    out, events = str(tmp_path / "run"), []
    error, _ = _run_failing(
        options, out, events, lambda orch: orch.submit(square_unless_7, 7).result(60)
    )
    assert "failed on square_unless_7(x=7): ZeroDivisionError: seven" in str(error)
    assert [e.inputs for e in events if e.state == "FAILED"] == ["square_unless_7(x=7)"]


def test_a_tile_names_its_place(options, tmp_path):
    out, events = str(tmp_path / "run"), []
    source = np.arange(64, dtype=np.float64).reshape(8, 8)
    error, report = _run_failing(
        options, out, events, lambda orch: orch.map_tiles(invert, source, 4)
    )
    assert "failed on invert(tile (0, 1) at [0:4, 4:8]): ValueError: bad tile" in str(error)
    (failed,) = [event for event in events if event.state == "FAILED"]
    _everywhere(out, report, events, failed.key, "invert(tile (0, 1) at [0:4, 4:8])")


# -- the journal of an earlier version -------------------------------------------------------------


V1_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, host TEXT, pid INTEGER, started REAL, ended REAL, outcome TEXT,
    resume INTEGER, argv TEXT);
CREATE TABLE tasks (
    key TEXT PRIMARY KEY, name TEXT, state TEXT, attempts INTEGER, worker TEXT, started REAL,
    ended REAL, peak_rss_mb REAL, error TEXT, canary INTEGER, resumed INTEGER, run INTEGER)
    WITHOUT ROWID;
INSERT INTO runs VALUES (1, 'h', 1, 1.0, 2.0, 'closed', 0, 'x');
INSERT INTO tasks VALUES ('load-1', 'load', 'FAILED', 1, 'w', 1.0, 1.5, NULL,
    'ValueError: old', 0, 0, 1);
"""


def test_a_journal_without_inputs_still_reads_and_gains_them(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with sqlite3.connect(out / JOURNAL_FILE) as connection:
        connection.executescript(V1_SCHEMA)
    status = read_status(str(out))
    assert status["failed"] == [
        {"key": "load-1", "name": "load", "worker": "w", "error": "ValueError: old", "inputs": None}
    ]
    assert "    on " not in format_status(status)
    with (
        ox.Orchestrator(mode="sequential", out_dir=str(out), resume=True) as orch,
        pytest.raises(ValueError),
    ):
        orch.compute(load(3))
    failed = {task["key"]: task["inputs"] for task in read_status(str(out))["failed"]}
    assert failed == {"load-1": None, load(3).key: "load(i=3)"}


def test_status_command_shows_the_inputs(tmp_path):
    out = str(tmp_path / "run")
    with ox.Orchestrator(mode="sequential", out_dir=out) as orch, pytest.raises(ValueError):
        orch.compute(load(3))
    command = [sys.executable, "-m", "orchestrix", "status", out]
    text = subprocess.run(command, capture_output=True, text=True, check=True, env=child_env())
    assert "    on load(i=3)" in text.stdout
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, check=True, env=child_env()
    )
    assert json.loads(as_json.stdout)["failed"][0]["inputs"] == "load(i=3)"


# -- the messages ----------------------------------------------------------------------------------


def test_the_message_of_a_task_that_raised():
    failure = TaskFailure("load-1", "load", ValueError("bad input"))
    error = failures.caller_error(failure, "load(i=3)")
    assert str(error) == "task 'load' failed on load(i=3): ValueError: bad input (key load-1)"
    assert isinstance(error, ValueError) and isinstance(error, ox.TaskError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and isinstance(copy, ValueError)
    plain = failures.caller_error(failure)  # no inputs known: the message of before
    assert str(plain) == "task 'load' failed: ValueError: bad input (key load-1)"


def test_a_verdict_ends_with_the_call_it_stopped():
    crash = failures.crash_error("load-1", "load", -9, 42)
    error = failures.caller_error(crash, "load(i=3)")
    assert error is crash and type(error) is ox.WorkerCrashedError and error.exitcode == -9
    assert str(error).startswith("the worker process running task 'load' was killed by SIGKILL")
    assert str(error).endswith("(pid 42, key load-1); the call: load(i=3)")
    assert str(failures.caller_error(crash, "load(i=3)")) == str(error)  # told once
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.exitcode) == (str(error), -9)
    upstream = failures.upstream_error("b-2", "b", crash, error, "load(i=3)")
    assert str(upstream).count("load(i=3)") == 1


def test_the_message_of_a_map_item():
    batch = failures.caller_error(TaskFailure("b-1", "sq[chunk]", ValueError("odd")), "sq(x=13)")
    error = failures.map_item_error(batch, "sq", 12, 2, ValueError("odd"), "tb", "sq(x=13)")
    assert str(error) == (
        "task 'sq' failed on map item 12, sq(x=13): ValueError: odd (key b-1[2], call 2 of "
        "batch task 'sq[chunk]')"
    )


def test_a_crashed_worker_names_the_call(options, tmp_path):
    if options["mode"] != "multiprocessing":
        pytest.skip("a worker process of a pool dies here")
    out, events = str(tmp_path / "run"), []
    options = {**options, "retries": 0}
    error, report = _run_failing(options, out, events, lambda orch: orch.compute(exit_with(3)))
    assert isinstance(error, ox.WorkerCrashedError)
    assert str(error).endswith("; the call: exit_with(code=3)")
    (failed,) = [event for event in events if event.state == "FAILED"]
    _everywhere(out, report, events, failed.key, "exit_with(code=3)")


def exit_on_7(x):
    if x == 7:
        os._exit(3)
    return x


def test_a_map_batch_whose_worker_died_names_its_items(options, tmp_path):
    if options["mode"] != "multiprocessing":
        pytest.skip("a worker process of a pool dies here")
    out, events = str(tmp_path / "run"), []

    def run(orch):
        list(orch.map(exit_on_7, range(9), chunksize=3))

    error, _ = _run_failing({**options, "retries": 0}, out, events, run)
    assert isinstance(error, ox.WorkerCrashedError) and error.name == "exit_on_7"
    assert "; the call: exit_on_7(x=6) ... exit_on_7(x=8) (3 calls) (map items 6 to 8" in str(error)
    (failed,) = [event for event in events if event.state == "FAILED"]
    assert failed.inputs == "exit_on_7(x=6) ... exit_on_7(x=8) (3 calls)"


# -- the journal keeps the inputs of a task failed, not of one done --------------------------------


def test_the_codec_carries_the_inputs():
    from orchestrix.journal import codec
    from orchestrix.records import FailureRecord

    events = [
        FailureRecord("k-1", "n", "w", "E: x", None, "n(i=1)"),
        FailureRecord("k-2", "n", "w", "E: y", None),
    ]
    flat: list = []
    for event in events:
        codec.ENCODERS[type(event)](flat.append, event)
    assert [(e.key, e.inputs) for e in codec.decode(flat)] == [("k-1", "n(i=1)"), ("k-2", None)]


@ox.task
def fail_unless(marker):
    if not os.path.exists(marker):
        raise FileNotFoundError(marker)
    return marker


def test_a_task_done_on_resume_loses_its_inputs(tmp_path):
    out, marker = str(tmp_path / "run"), str(tmp_path / "marker")
    target = fail_unless(marker)
    for attempt in range(2):
        with ox.Orchestrator(mode="sequential", out_dir=out, resume=True) as orch:
            if attempt == 0:
                with pytest.raises(FileNotFoundError):
                    orch.compute(target)
                open(marker, "w").close()
            else:
                assert orch.compute(target) == marker
        with sqlite3.connect(f"{out}/{JOURNAL_FILE}") as connection:
            row = connection.execute(
                "SELECT state, inputs FROM tasks WHERE key = ?", (target.key,)
            ).fetchone()
        inputs = f"fail_unless(marker={short_repr(marker)})"
        assert row == (("FAILED", inputs), ("DONE", None))[attempt]


def test_a_bad_item_leaves_its_container_shown():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    assert short_repr([1, Hostile(), "a"]) == "[1, <Hostile>, 'a']"
