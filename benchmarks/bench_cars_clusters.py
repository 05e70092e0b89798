"""CARS's own clusters and the orchestrix mode side by side, through CARS's cluster API.

Workload ``shared-grid`` (the case from the CARS plugin's issue): one xarray Dataset grid of 32 MiB
(a 2048 x 2048 float64 variable) shared by 40 tasks, each summing a band of it; the grid goes
through ``cluster.scatter(grid)`` as a CARS application passes a shared input, and every task
is made by ``cluster.create_task``. Engines (``--engines``), 2 workers each: ``cars-mp`` (CARS's
multiprocessing cluster, its default), ``cars-dask`` (CARS's local_dask), ``ox-mp`` and
``ox-dask`` (``{"mode": "orchestrix", "backend": "multiprocessing" | "local_dask"}``).

Each (engine, repeat) runs in a fresh child process, which builds its cluster (start-up is
measured apart: building the cluster and one trivial task), then times the workload from
``scatter`` to the last result. Repeats are interleaved and rotated; the table gives medians and
the ratio to ``cars-mp`` (below 1: faster than CARS's default cluster).

Run: ``python benchmarks/bench_cars_clusters.py [--repeat 3] [--engines ...]`` (needs
``pip install "orchestrix[cars]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ENGINES = {
    "cars-mp": {"mode": "multiprocessing", "nb_workers": 2},
    "cars-dask": {"mode": "local_dask", "nb_workers": 2},
    "ox-mp": {"mode": "orchestrix", "backend": "multiprocessing", "nb_workers": 2},
    "ox-dask": {"mode": "orchestrix", "backend": "local_dask", "nb_workers": 2},
}
GRID_SIDE = 2048  # float64: 32 MiB
TASKS = 40


def band_sum(grid: Any, index: int) -> Any:
    """One task: the sum of a band of the shared grid, in a Dataset's attributes (CARS's
    multiprocessing cluster dumps only Datasets, DataFrames and CarsDicts: any other result
    type fails there)."""
    import xarray as xr

    step = GRID_SIDE // TASKS
    total = float(grid["hgt"].values[index * step : (index + 1) * step].sum())
    return xr.Dataset(attrs={"sum": total, "index": index})


def trivial(value: int) -> Any:
    import xarray as xr

    return xr.Dataset(attrs={"value": value})


def make_grid() -> Any:
    import numpy as np
    import xarray as xr

    values = np.random.default_rng(0).random((GRID_SIDE, GRID_SIDE))
    return xr.Dataset({"hgt": (("row", "col"), values)})


def child(engine: str, work_dir: str) -> dict[str, float]:
    """Build the engine's cluster, run the workload once, return the times."""
    from cars.orchestrator.cluster.abstract_cluster import AbstractCluster

    grid = make_grid()
    expected = sorted(band_sum(grid, index).attrs["sum"] for index in range(TASKS))
    out_dir = os.path.join(work_dir, "out")
    os.makedirs(out_dir)  # CARS's dask clusters write their dask config there first
    started = time.perf_counter()
    cluster = AbstractCluster(dict(ENGINES[engine]), out_dir, os.path.join(work_dir, "logs"))
    try:
        first = cluster.create_task(trivial)(1)
        (warm,) = cluster.future_iterator(cluster.start_tasks([first]))
        assert warm.attrs["value"] == 1
        startup = time.perf_counter() - started
        started = time.perf_counter()
        shared = cluster.scatter(grid)
        task = cluster.create_task(band_sum)
        delayeds = [task(shared, index) for index in range(TASKS)]
        results = list(cluster.future_iterator(cluster.start_tasks(delayeds), timeout=600))
        wall = time.perf_counter() - started
    finally:
        cluster.cleanup()
    found = sorted(result.attrs["sum"] for result in results)
    # the last digit may differ: numpy's summation order depends on the buffer's alignment
    same = all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(found, expected, strict=True))
    assert same, f"wrong results: {found[:3]} for {expected[:3]}"
    return {"startup_s": startup, "wall_s": wall}


def run_child(engine: str, timeout: float) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory(prefix="bench-cars-") as work_dir:
        command = [sys.executable, __file__, "--child", engine, "--work-dir", work_dir]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {engine}: timed out after {timeout} s", file=sys.stderr)
            return None
    if done.returncode != 0:
        print(f"  {engine}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work_dir)))
        return
    runs: dict[str, list[dict[str, float]]] = {engine: [] for engine in args.engines}
    for repeat in range(args.repeat):
        order = (
            args.engines[repeat % len(args.engines) :] + args.engines[: repeat % len(args.engines)]
        )
        for engine in order:
            result = run_child(engine, args.timeout)
            print(f"repeat {repeat + 1} {engine}: {result}", file=sys.stderr)
            if result is not None:
                runs[engine].append(result)
    report(runs)


def report(runs: dict[str, list[dict[str, float]]]) -> None:
    def median(engine: str, key: str) -> float | None:
        values = [run[key] for run in runs.get(engine, [])]
        return statistics.median(values) if values else None

    base = median("cars-mp", "wall_s")
    print(f"shared-grid: {TASKS} tasks x one {GRID_SIDE}x{GRID_SIDE} float64 grid, 2 workers")
    print(f"{'engine':<10} {'runs':>4} {'wall s':>8} {'/ cars-mp':>10} {'start-up s':>11}")
    for engine in runs:
        wall, startup = median(engine, "wall_s"), median(engine, "startup_s")
        shown = "-" if wall is None else f"{wall:.2f}"
        ratio = "-" if wall is None or not base else f"{wall / base:.2f}"
        start = "-" if startup is None else f"{startup:.2f}"
        print(f"{engine:<10} {len(runs[engine]):>4} {shown:>8} {ratio:>10} {start:>11}")


if __name__ == "__main__":
    main()
