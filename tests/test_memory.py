"""Memory and scale: a fused chain holds only what its remaining steps need, and ``map`` batches
tiny calls itself (results in order, errors naming the item's call)."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

import orchestrix as ox
from conftest import BACKENDS
from orchestrix.engine.mapping import BatchSizer
from orchestrix.graph.factorize import factorize
from orchestrix.graph.tasks import build_graph
from tasks import inc, raise_on, sleep_for, square

ARRAY_MB = 8
STEPS = 30


def make(seed: int) -> np.ndarray:
    return np.full(ARRAY_MB * 2**20 // 8, float(seed))


def step(array: np.ndarray) -> np.ndarray:
    return array * 0.5 + 1.0


def split(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return array + 1.0, array - 1.0


def join(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return pair[0] + pair[1]


def total(array: np.ndarray) -> float:
    return float(array.sum())


def chain(seed: int, steps: int = STEPS) -> ox.Delayed:
    value = ox.task(make)(seed)
    for _ in range(steps):
        value = ox.task(step)(value)
    return value


def test_release_schedule_of_a_chain_with_a_two_output_task_and_an_input() -> None:
    source = ox.task(make)(1)
    head = ox.task(step)(source)
    left, right = ox.task(split, nout=2)(head)
    joined = ox.task(join)((left, right))  # reads both outputs of the 2-output task
    tail = ox.task(total)(joined)
    other = ox.task(total)(source)  # source has two readers: it stays a unit of its own
    units = factorize(build_graph([tail, other]), {tail.key, other.key})
    (fused,) = [unit for unit in units if len(unit.tasks) > 1]
    keys = [node.key for node in fused.tasks]
    assert fused.deps == (source.key,)
    # The input goes after the head, each intermediate after the next task; the output stays.
    assert fused.release == ((source.key,), (keys[0],), (keys[1],), (keys[2],))


@pytest.mark.timeout(120)
def test_fused_chain_holds_two_arrays_not_all_of_them() -> None:
    """30 steps of 8 MB arrays: the unit used to keep every intermediate (240 MB)."""
    with ox.Orchestrator(mode="sequential") as orch:
        tracemalloc.start()
        try:
            result = orch.compute(chain(3))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    peak_arrays = peak / (ARRAY_MB * 2**20)
    assert peak_arrays < 3.5, f"a fused chain peaked at {peak_arrays:.1f} arrays"
    with ox.Orchestrator(mode="sequential", factorize_tasks=False) as unfused:
        np.testing.assert_array_equal(result, unfused.compute(chain(3)))


@pytest.mark.timeout(180)
def test_fused_chains_in_workers_stay_small_and_equal_the_oracle(oracle) -> None:
    """In worker processes: peak RSS per worker (the monitor's) stays far from 30 arrays."""
    steps, array_mb = STEPS, ARRAY_MB
    targets = [ox.task(total)(chain(seed, steps)) for seed in range(4)]
    options = {"mode": "multiprocessing", "nb_workers": 2, "dump_to_disk": False}
    with ox.Orchestrator(**options) as orch:
        results = orch.compute(targets)
        workers = orch.summary().workers
    assert results == oracle.compute(targets)
    peaks = [facts["peak_rss_mb"] for facts in workers.values()]
    assert peaks and all(peak is not None for peak in peaks)
    # A worker with numpy is ~30-60 MB; every intermediate kept would add steps x 8 = 240 MB.
    assert max(peaks) < 60 + (steps // 2) * array_mb, f"worker peak RSS {peaks} MB"


# -- map: lazy items, automatic batches -----------------------------------------------------------

MAP_BACKENDS = ["sequential", "mp-forkserver"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", MAP_BACKENDS)
def test_map_batches_tiny_calls_itself(name, oracle) -> None:
    items = range(30_000)
    with ox.Orchestrator(**BACKENDS[name]) as orch:
        got = list(orch.map(square, items))
        tasks = orch.summary().tasks_done
    assert got == list(oracle.map(square, items, chunksize=1000)) == [i * i for i in items]
    assert tasks < 300, f"{tasks} tasks for 30,000 tiny calls: map did not batch them"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", MAP_BACKENDS)
def test_map_failure_in_a_batch_names_its_item_after_the_results_before_it(name) -> None:
    with ox.Orchestrator(**BACKENDS[name]) as orch:
        results = orch.map(raise_on, range(20_000), [12_345] * 20_000)
        assert [next(results) for _ in range(12_345)] == list(range(12_345))
        with pytest.raises(ox.TaskError, match="map item 12345") as info:
            next(results)
        assert orch.summary().tasks_done < 12_345 // 10  # the item was inside a batch
    error = info.value
    assert error.name == "raise_on" and "KeyError" in str(error)
    assert isinstance(error.__cause__, KeyError)
    if name != "sequential":
        assert "raise_on" in str(error.__cause__.__cause__)  # the worker's traceback


@pytest.mark.timeout(60)
def test_map_explicit_chunksize_keeps_its_meaning(oracle) -> None:
    with ox.Orchestrator(**BACKENDS["mp-forkserver"]) as orch:
        assert list(orch.map(square, range(1000), chunksize=100)) == [i * i for i in range(1000)]
        assert orch.summary().tasks_done == 10
        assert list(orch.map(square, range(50), chunksize=1)) == [i * i for i in range(50)]
        by_name = orch.summary().by_name
    assert by_name["square"].count == 50  # a task per call, named after the function


@pytest.mark.timeout(60)
def test_map_reads_its_items_lazily() -> None:
    """An endless iterable: items are read as results are taken (it used to read them all)."""
    with ox.Orchestrator(**BACKENDS["mp-forkserver"]) as orch:
        results = orch.map(square, itertools.count())
        assert [next(results) for _ in range(5_000)] == [i * i for i in range(5_000)]
        results.close()  # the calls still in flight are cancelled
        assert list(orch.map(pow, itertools.count(), [1, 2, 3])) == [0, 1, 8]


@pytest.mark.timeout(60)
def test_map_timeout_and_progress_count_items(capfd) -> None:
    with ox.Orchestrator(**BACKENDS["mp-forkserver"]) as orch:
        assert len(list(orch.map(square, range(3_000), progress=True))) == 3_000
        assert "3000/3000" in capfd.readouterr().err
        results = orch.map(sleep_for, [0.01] * 5 + [30.0], timeout=2)
        with pytest.raises(TimeoutError):
            list(results)


def test_batch_sizer_grows_by_doubling_to_the_target_and_shrinks_at_once() -> None:
    sizer = BatchSizer(target_s=0.05, most=10_000)
    sizes = []
    for _ in range(20):
        sizer.observe(sizer.size, sizer.size * 1e-6)  # 1 us a call: the ideal is 50,000
        sizes.append(sizer.size)
    assert sizes[:4] == [2, 4, 8, 16] and sizes[-1] == 10_000
    sizer.observe(100, 1.0)  # the calls became slow (10 ms each)
    assert sizer.size < 50
    fixed = BatchSizer(7)
    fixed.observe(7, 100.0)
    assert fixed.size == 7


def test_batch_sizer_keeps_batches_of_big_items_to_a_few_megabytes() -> None:
    sizer = BatchSizer(target_s=0.05)
    for _ in range(30):
        sizer.observe(sizer.size, sizer.size * 1e-6, bytes_per_call=160_000)
    assert sizer.size * 160_000 <= 4 * 2**20


def test_a_run_keeps_no_container_per_pending_unit_for_the_collector_to_walk() -> None:
    # Each full collection walks every tracked container: per-unit containers that hold nothing
    # made the caller's cost per task grow with the number of tasks (6 tracked objects per
    # pending task, now 4: the caller's Delayed and TaskNode, the WorkUnit and its tuple).
    import gc

    from orchestrix.engine.scheduler import _Run

    targets = [inc(i) for i in range(10_000)]
    units = factorize(build_graph(targets), {t.key for t in targets})
    gc.collect()
    before = len(gc.get_objects())
    run = _Run(units, targets, monitor=None)
    gc.collect()  # tuples of plain values are untracked by a collection
    per_unit = (len(gc.get_objects()) - before) / len(units)
    assert per_unit < 0.1, f"{per_unit:.2f} tracked objects per pending unit"
    assert run.ready
