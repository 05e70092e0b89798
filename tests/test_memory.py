"""Memory and scale: a fused chain holds only what its remaining steps need, and ``map`` batches
tiny calls itself (results in order, errors naming the item's call)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import orchestrix as ox
from orchestrix.factorize import factorize
from orchestrix.graph import build_graph

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
