"""The Executor contract, on every backend, with sequential as the oracle: a task's failure is
caught as its own exception type in every API, futures are honest about their call, timeouts are
TimeoutErrors, arrays in results can be changed in place, and compute and as_completed take the
same targets and refuse the same things."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

import orchestrix as ox
from contract_tasks import (
    add_one_in_place,
    big_array,
    divide,
    divide_task,
    lookup,
    mark_then_wait,
    napping,
    open_missing,
)
from deadline import within
from orchestrix.errors import untyped_class
from tasks import inc

pytestmark = pytest.mark.timeout(300)


# -- a task's failure is its own exception type, in every API ---------------------------------


def failing_calls(orch):
    """Each API failing on a ZeroDivisionError raised by a task."""
    return {
        "future.result": lambda: orch.submit(divide, 1, 0).result(),
        "map": lambda: list(orch.map(divide, [1, 1], [1, 0])),
        "map chunksize=1": lambda: list(orch.map(divide, [1, 1], [1, 0], chunksize=1)),
        "compute": lambda: orch.compute([inc(1), divide_task(1, 0)]),
        "compute downstream": lambda: orch.compute(inc(divide_task(1, 0))),
        "as_completed": lambda: list(orch.as_completed([inc(1), divide_task(1, 0)])),
    }


def test_a_task_failure_is_caught_as_its_own_type_in_every_api(orch, oracle):
    for api, call in failing_calls(orch).items():
        with pytest.raises(ZeroDivisionError) as info:
            within(60, call)
        error = info.value
        assert isinstance(error, ox.TaskError), api  # except TaskError still works
        assert error.key and error.name in ("divide", "divide_task", "inc"), api
        assert type(error).__name__.endswith("(ZeroDivisionError)"), api
        assert isinstance(error.__cause__, ZeroDivisionError), api
        with pytest.raises(ZeroDivisionError) as expected:
            failing_calls(oracle)[api]()
        assert untyped_class(error) is untyped_class(expected.value), api


def test_the_worker_traceback_is_the_cause_of_the_cause(orch, options):
    with pytest.raises(ZeroDivisionError) as info:
        within(60, orch.submit(divide, 1, 0).result)
    cause = info.value.__cause__
    assert isinstance(cause, ZeroDivisionError)
    if options["mode"] != "sequential":  # from another process: its traceback as text
        assert isinstance(cause.__cause__, ox.RemoteTraceback)
        assert "in divide" in str(cause.__cause__)


def test_exception_details_reach_the_caller(orch):
    with pytest.raises(KeyError) as info:
        within(60, orch.submit(lookup, "unknown").result)
    assert info.value.__cause__.args == ("unknown",)
    with pytest.raises(FileNotFoundError) as missing:
        within(60, orch.submit(open_missing, "/nonexistent/file.tif").result)
    assert missing.value.filename == "/nonexistent/file.tif"
    assert missing.value.errno == 2


# -- honest futures ---------------------------------------------------------------------------


def wait_until(condition, seconds=60.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_a_future_runs_once_a_worker_has_it_and_cannot_be_cancelled_then(orch, tmp_path):
    marker, release = str(tmp_path / "ran"), str(tmp_path / "release")
    future = orch.submit(mark_then_wait, marker, release) if _parallel(orch) else None
    if future is None:  # sequential: the call has run by the time submit returns
        open(release, "w").close()
        future = orch.submit(mark_then_wait, marker, release)
        assert future.done() and not future.cancel()
        return
    wait_until(lambda: os.path.exists(marker))
    wait_until(future.running)  # the call runs: the future says so
    assert not future.cancel() and not future.cancelled()
    open(release, "w").close()
    assert within(60, future.result) == marker


def test_cancel_is_true_only_for_calls_that_never_run(orch, tmp_path):
    release = str(tmp_path / "release")
    if not _parallel(orch):
        open(release, "w").close()  # each call runs within submit: let it end
    futures = _submit_waiting_calls(orch, tmp_path, release, 20)
    cancelled = {marker for marker, future in futures.items() if future.cancel()}
    open(release, "w").close()
    for marker, future in futures.items():
        if marker in cancelled:
            assert future.cancelled()
        else:
            assert within(60, future.result) == marker
    time.sleep(0.5)  # a cancelled call that ran anyway would have written its marker by now
    for marker in futures:
        assert os.path.exists(marker) == (marker not in cancelled), marker
    if _parallel(orch):
        assert cancelled, "20 calls behind 2 busy workers: some must be cancellable"


def test_shutdown_cancel_futures_cancels_only_what_has_not_started(options, tmp_path):
    release = str(tmp_path / "release")
    if options["mode"] == "sequential":
        open(release, "w").close()
    with ox.Orchestrator(**options) as orch:
        futures = _submit_waiting_calls(orch, tmp_path, release, 12)
        running = [marker for marker, future in futures.items() if future.running()]
        open(release, "w").close()
        within(60, orch.shutdown, cancel_futures=True)
    for marker, future in futures.items():
        assert future.done()
        if future.cancelled():
            assert not os.path.exists(marker) and marker not in running
        else:
            assert future.result() == marker  # it started: it ran to its end


def _submit_waiting_calls(orch, tmp_path, release, count):
    """``count`` calls that mark their file, then wait for ``release``: {marker: future}, once
    a worker has one (in the parallel modes)."""
    futures = {}
    for i in range(count):
        marker = str(tmp_path / f"ran-{i}")
        futures[marker] = orch.submit(mark_then_wait, marker, release)
    if _parallel(orch):
        wait_until(lambda: any(f.running() for f in futures.values()))
    return futures


def _parallel(orch):
    return orch.config.mode != "sequential"


# -- timeouts are TimeoutErrors ---------------------------------------------------------------


def test_compute_and_as_completed_timeouts_raise_the_builtin_timeout_error(orch):
    if not _parallel(orch):  # a task runs within the call: the deadline is seen between tasks
        with pytest.raises(TimeoutError, match=r"2 \(of 3\) targets unfinished"):
            orch.compute([napping(0.3), napping(0.31), napping(0.32)], timeout=0.1)
        return
    assert orch.compute(inc(0)) == 1  # workers up first (cluster jobs start slowly)
    # napping(3) cannot be done; inc(1) usually is (a loaded machine may take longer)
    with pytest.raises(TimeoutError, match=r"[12] \(of 2\) targets unfinished"):
        within(60, orch.compute, [inc(1), napping(3)], timeout=0.5)
    seen = []
    with pytest.raises(TimeoutError):
        for item in within(60, orch.as_completed, [inc(1), napping(3)], timeout=1.0):
            seen.append(item)
    assert orch.compute(inc(1), timeout=60) == 2
    with pytest.raises(concurrent.futures.TimeoutError):  # the same class, since Python 3.11
        orch.compute(napping(3), timeout=0.2)


def test_task_timeouts_and_stalls_are_timeout_errors():
    assert issubclass(ox.TaskTimeoutError, TimeoutError)
    assert issubclass(ox.StallError, TimeoutError)


def test_a_bad_timeout_is_refused(orch):
    for bad in (-1, "5", True):
        with pytest.raises(ValueError, match="timeout"):
            orch.compute(inc(1), timeout=bad)


# -- arrays in results behave alike ---------------------------------------------------------


def test_arrays_in_results_can_be_changed_in_place_without_touching_other_tasks(orch, oracle):
    array = orch.compute(big_array(2.0))
    array += 1  # a read-only map would refuse this
    assert float(array.sum()) == 3.0 * 2**17
    assert float(orch.compute(big_array(2.0)).sum()) == 2.0 * 2**17  # computed again: intact
    source = big_array(5.0)
    changed, unchanged = orch.compute([add_one_in_place(source), add_one_in_place(source)])
    expected = oracle.compute([add_one_in_place(big_array(5.0))])[0]
    assert changed == expected == 6.0 * 2**17
    assert unchanged in (expected, 7.0 * 2**17)  # in one process the input is shared


# -- compute and as_completed take the same targets -------------------------------------------


def test_compute_and_as_completed_take_the_same_structures(orch, oracle):
    targets = [inc(1), (inc(2), 5), {"a": [inc(3)]}, "plain"]
    assert orch.compute(targets) == oracle.compute(targets) == [2, (3, 5), {"a": [4]}, "plain"]
    completed = dict(orch.as_completed(targets))
    assert completed == dict(enumerate(oracle.compute(targets)))
    assert dict(orch.as_completed({"x": inc(1), "y": [inc(2)]})) == {"x": 2, "y": [3]}


def refused_targets():
    import dask

    return {
        "generator": (inc(i) for i in range(2)),
        "set": {inc(1)},
        "dask collection": dask.delayed(sum)([1, 2]),
        "future": concurrent.futures.Future(),
        "task function": inc,
        "nested generator": [inc(1), iter([inc(2)])],
    }


@pytest.mark.parametrize("api", ["compute", "as_completed"])
def test_what_cannot_be_computed_is_refused_saying_what_to_do(orch, api):
    for what, targets in refused_targets().items():
        call = getattr(orch, api)
        with pytest.raises(TypeError, match=f"{api} cannot compute") as info:
            call(targets if api == "compute" or what.startswith("nested") else [targets])
        hint = {
            "generator": "list",
            "set": "list",
            "dask collection": "dask",
            "future": "result",
            "task function": "call it",
            "nested generator": "list",
        }
        assert hint[what] in str(info.value), (what, str(info.value))
    with pytest.raises(TypeError, match="list, tuple or dict"):
        orch.as_completed(inc(1))
