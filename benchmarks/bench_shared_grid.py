"""40 tasks reading one 32 MB xarray grid: ``Orchestrator.scatter`` against passing the grid.

Each task sums a window of the grid (a Dataset of two 1000 x 2000 float64 variables); 2
workers. Passed directly, the grid is pickled into every task's payload (and hashed for every
task's key); scattered, it is written once (multiprocessing: a dump file each worker maps) or
sent once to each worker (local_dask), and tasks carry a handle.

The workload is importable, for drivers that run it elsewhere (CARS's own clusters):
``make_grid()``, ``window_sum(grid, index)`` (module level, plain arguments) and ``TASKS``.

Run: ``python benchmarks/bench_shared_grid.py [mode ...]`` (``PYTHONPATH=src`` for this tree);
modes default to multiprocessing and local_dask. Times (seconds, the caller's wall clock from
the first call to the last result, orchestrator already started) are printed per mode.

On 2026-12-02 (2 busy cores): multiprocessing 2.56 s passed directly, 0.63 s scattered;
local_dask 75.15 s passed directly, 1.05 s scattered (the scatter itself included).
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np

TASKS = 40
WORKERS = 2
SHAPE = (1000, 2000)  # 16 MB per variable, two variables: 32 MB
WINDOW = 100


def make_grid() -> Any:
    """The shared input: a 32 MB xarray Dataset."""
    import xarray as xr

    rows, cols = SHAPE
    grid = np.arange(rows * cols, dtype=np.float64).reshape(SHAPE) % 11
    return xr.Dataset(
        {"a": (("y", "x"), grid), "b": (("y", "x"), grid * 0.5)},
        coords={"y": np.arange(rows), "x": np.arange(cols)},
    )


def window_sum(grid: Any, index: int) -> float:
    """One task: the sum of window ``index`` of both variables."""
    rows = slice((index * WINDOW) % SHAPE[0], (index * WINDOW) % SHAPE[0] + WINDOW)
    cols = slice(index * 7, index * 7 + WINDOW)
    return float(grid["a"].values[rows, cols].sum() + grid["b"].values[rows, cols].sum())


def expected() -> list[float]:
    grid = make_grid()
    return [window_sum(grid, i) for i in range(TASKS)]


def run(mode: str, scatter: bool) -> float:
    """Seconds for the 40 tasks in ``mode``, the grid scattered or passed to every task."""
    import orchestrix as ox

    task = ox.task(window_sum)
    grid = make_grid()
    with ox.Orchestrator(mode=mode, nb_workers=WORKERS) as orch:
        orch.compute(ox.task(len)([1]))  # workers up before the clock starts
        begin = time.perf_counter()
        argument = orch.scatter(grid) if scatter else grid
        results = orch.compute([task(argument, i) for i in range(TASKS)])
        seconds = time.perf_counter() - begin
    assert results == expected(), "wrong results"
    return seconds


def main(modes: list[str]) -> None:
    warnings.simplefilter("ignore")  # the large-argument warning of the direct runs
    print(f"{TASKS} tasks x 32 MB xarray grid, {WORKERS} workers (seconds)")
    for mode in modes:
        direct, shared = run(mode, scatter=False), run(mode, scatter=True)
        print(f"{mode:16} passed directly {direct:7.2f}   scatter {shared:7.2f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["multiprocessing", "local_dask"])
