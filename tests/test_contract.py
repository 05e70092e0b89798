"""The contract every backend honours, checked against the sequential backend (the oracle)."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

import orchestrix as ox
from tasks import (
    add,
    checksum,
    describe,
    divmod_task,
    fail,
    ident,
    inc,
    make_array,
    raise_on,
    record,
    record_impure,
    recorded,
    scale,
    square,
    three,
    total,
    wrong_nout,
)


def test_single_task(orch, oracle):
    assert orch.compute(inc(41)) == oracle.compute(inc(41)) == 42


def test_non_delayed_leaves_pass_through(orch):
    assert orch.compute({"a": inc(1), "b": 7, "c": [inc(2), "x"]}) == {
        "a": 2,
        "b": 7,
        "c": [3, "x"],
    }
    assert orch.compute((inc(1), inc(2))) == (2, 3)
    assert orch.compute([]) == []


def test_nout_outputs_are_separate_delayed(orch, oracle):
    q, r = divmod_task(17, 5)
    assert orch.compute([q, r]) == oracle.compute([q, r]) == [3, 2]
    a, b, c = three(2)
    assert orch.compute(add(a, c)) == 8
    assert orch.compute(b) == 4


def test_wrong_number_of_outputs_is_a_task_error(orch):
    first, _ = wrong_nout(5)
    with pytest.raises(ox.TaskError, match="nout=2") as info:
        orch.compute(first)
    assert info.value.name == "wrong_nout"
    assert isinstance(info.value.__cause__, TypeError)


def test_single_output_delayed_cannot_be_unpacked():
    with pytest.raises(TypeError, match="nout"):
        _first, _second = inc(1)


def test_nested_containers_in_arguments(orch, oracle):
    data = {"list": [inc(1), (inc(2), {"deep": inc(3)})], "plain": [1, 2], "tuple": (inc(4),)}
    expected = {"list": [2, (3, {"deep": 4})], "plain": [1, 2], "tuple": (5,)}
    assert orch.compute(describe(data)) == oracle.compute(describe(data)) == expected


def test_diamond(orch, oracle):
    top = inc(1)
    left, right = inc(top), add(top, 10)
    bottom = add(left, right)
    assert orch.compute(bottom) == oracle.compute(bottom) == 3 + 12


def test_ten_thousand_tasks(orch, oracle):
    leaves = [inc(i) for i in range(5000)]
    chains = [ident(leaf) for leaf in leaves[:4999]]
    root = total(*chains)
    expected = sum(i + 1 for i in range(4999))
    assert orch.compute(root) == oracle.compute(root) == expected


def test_long_chain_does_not_recurse(orch):
    node = inc(0)
    for _ in range(9999):
        node = inc(node)
    assert orch.compute(node) == 10000


def test_kwargs(orch, oracle):
    node = total(inc(1), inc(2), start=inc(100))
    assert orch.compute(node) == oracle.compute(node) == 2 + 3 + 101


def test_large_numpy_arrays(orch, oracle):
    big = make_array(64 * 2**20, 1.5)
    doubled = scale(big, 2.0)
    values = orch.compute([checksum(doubled), doubled])
    assert values[0] == oracle.compute(checksum(doubled)) == 3.0 * (64 * 2**20 // 8)
    assert isinstance(values[1], np.ndarray) and values[1].nbytes == 64 * 2**20
    np.testing.assert_array_equal(values[1], oracle.compute(doubled))


def test_numpy_argument_from_caller(orch, oracle):
    array = np.arange(2**20, dtype=np.float64).reshape(1024, 1024)
    node = checksum(scale(array, 3.0))
    assert orch.compute(node) == oracle.compute(node) == float(array.sum() * 3.0)


def test_raising_task_names_task_and_keeps_cause(orch):
    node = fail("no luck")
    with pytest.raises(ox.TaskError) as info:
        orch.compute(node)
    error = info.value
    assert error.key == node.key and error.name == "fail"
    assert "fail" in str(error) and "no luck" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "no luck"


def test_dependents_of_failed_task_do_not_run(orch, tmp_path):
    log = tmp_path / "ran"
    downstream = record(str(log), fail("upstream broke"))
    with pytest.raises(ox.UpstreamTaskError) as info:
        orch.compute(downstream)
    error = info.value
    assert error.name == "record" and error.upstream_name == "fail"
    assert "fail" in str(error) and "upstream broke" in str(error)
    assert isinstance(error.__cause__, ox.TaskError)
    assert isinstance(error.__cause__.__cause__, ValueError)
    assert recorded(log) == []


def test_failure_is_reported_for_the_failed_target_itself(orch):
    broken = fail()
    with pytest.raises(ox.TaskError) as info:
        orch.compute([inc(1), broken, inc(broken)])
    assert info.value.key == broken.key
    assert not isinstance(info.value, ox.UpstreamTaskError)


def test_shared_nodes_run_once(orch, tmp_path):
    log = str(tmp_path / "ran")
    shared = record(log, 4)
    graph = [add(shared, 1), add(shared, 2), shared]
    assert orch.compute(graph) == [5, 6, 4]
    assert recorded(log) == ["4"]


def test_same_call_twice_is_one_node(orch, tmp_path):
    log = str(tmp_path / "ran")
    assert orch.compute([record(log, 3), record(log, 3)]) == [3, 3]
    assert recorded(log) == ["3"]


def test_impure_tasks_are_not_merged(orch, tmp_path):
    log = str(tmp_path / "ran")
    assert orch.compute([record_impure(log, 3), record_impure(log, 3)]) == [3, 3]
    assert recorded(log) == ["3", "3"]


def test_as_completed_yields_every_index_once(orch, oracle):
    targets = [inc(i) for i in range(50)] + [add(inc(1), inc(2))]
    seen = dict(orch.as_completed(targets))
    assert seen == dict(oracle.as_completed(targets))
    assert sorted(seen) == list(range(51))
    assert seen[50] == 5


def test_as_completed_raises_on_failure(orch):
    with pytest.raises(ox.TaskError):
        list(orch.as_completed([inc(1), fail()]))


def test_as_completed_takes_what_compute_takes(orch):
    """A plain value among the targets is complete at once, as compute hands it back."""
    assert sorted(orch.as_completed([inc(1), 2])) == [(0, 2), (1, 2)]
    with pytest.raises(TypeError, match=r"as_completed\(targets\)\[1\]"):
        orch.as_completed([inc(1), {3}])


def test_compute_inside_as_completed_loop(orch):
    results = {}
    for index, value in orch.as_completed([inc(i) for i in range(5)]):
        results[index] = orch.compute(inc(value))
    assert results == {i: i + 2 for i in range(5)}


def test_submit_returns_a_future(orch):
    future = orch.submit(square, 12)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 144
    assert orch.submit(add, inc(1), b=inc(2)).result(timeout=60) == 5


def test_submit_failure_is_set_on_the_future(orch):
    future = orch.submit(raise_on, 3, 3)
    error = future.exception(timeout=60)
    assert isinstance(error, ox.TaskError)
    assert isinstance(error.__cause__, KeyError)


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_keeps_order(orch, oracle, chunksize):
    items = list(range(23))
    got = list(orch.map(square, items, chunksize=chunksize))
    assert got == list(oracle.map(square, items)) == [i * i for i in items]


def test_map_many_iterables_and_empty(orch):
    assert list(orch.map(pow, [2, 3, 4], [3, 2, 1])) == [8, 9, 4]
    assert list(orch.map(square, [])) == []


def test_map_failure_raises_at_its_position(orch):
    results = orch.map(raise_on, range(10), [4] * 10)
    assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ox.TaskError) as info:
        next(results)
    assert isinstance(info.value.__cause__, KeyError)


def test_executor_map_rejects_bad_chunksize(orch):
    with pytest.raises(ValueError, match="chunksize"):
        orch.map(square, [1], chunksize=0)


def test_results_match_across_factorization(options):
    top = inc(1)
    graph = [add(inc(inc(top)), ident(top)), three(inc(2))[1]]
    results = []
    for factorize in (True, False):
        with ox.Orchestrator(**options, factorize_tasks=factorize) as orchestrator:
            results.append(orchestrator.compute(graph))
    assert results[0] == results[1] == [6, 6]


def test_traceback_shows_the_line_that_raised(orch):
    import traceback

    with pytest.raises(ox.TaskError) as info:
        orch.compute(inc(fail("deep trouble")))
    text = "".join(traceback.format_exception(info.value))
    assert "raise ValueError(message)" in text  # the task's own source line
    assert "ValueError: deep trouble" in text
    assert "UpstreamTaskError(ValueError): task 'inc' did not run: upstream task 'fail'" in text
