"""The caller's cost at scale: tiny tasks through ``compute`` and items through ``map``, and
``map``'s automatic batching against joblib's on 200,000 tiny items.

Workloads (``--workloads``), each run in a fresh child process (so its peak memory is its own):

* ``compute``: N independent tiny tasks (``inc(i)``) built and computed in one ``compute`` call,
  at N = 10,000, 100,000 and 1,000,000 (``--compute-sizes``). Measured: the caller's wall and CPU
  time per task, split into building the targets and running them, and its peak RSS during the run
  above its RSS before the targets were built, per task (psutil, sampled every 10 ms).
* ``map``: N items through ``orch.map(inc, range(N))`` (automatic batches), at 10,000 to
  10,000,000 (``--map-sizes``). Same measures, per item.
* ``batching``: 200,000 tiny items through orchestrix's ``map`` (no chunksize) and through
  ``joblib.Parallel(n_jobs=2)`` (loky, its default automatic batching), side by side, interleaved
  over ``--repeat`` rounds; the median walls and their ratio.

Every engine has 2 workers (orchestrix ``multiprocessing``, forkserver); the start-up (pool up and
a first result) is outside the clock. Run: ``python benchmarks/bench_scale.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

NB_WORKERS = 2
BATCHING_ITEMS = 200_000


def inc(x: int) -> int:
    return x + 1


class PeakRss:
    """The process's peak RSS while in the block, sampled every 10 ms in a thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def run_compute(n: int) -> dict[str, Any]:
    import orchestrix as ox

    task = ox.task(inc)
    with ox.Orchestrator(mode="multiprocessing", nb_workers=NB_WORKERS) as orch:
        orch.compute(task(-1))
        before = psutil.Process().memory_info().rss
        with PeakRss() as rss:
            targets, build_wall, build_cpu = _timed(lambda: [task(i) for i in range(n)])
            values, run_wall, run_cpu = _timed(lambda: orch.compute(targets))
        assert values[0] == 1 and values[-1] == n and len(values) == n
    return {
        "n": n,
        "build_us": build_wall / n * 1e6,
        "run_us": run_wall / n * 1e6,
        "cpu_us": (build_cpu + run_cpu) / n * 1e6,
        "peak_bytes_per_task": (rss.peak - before) / n,
    }


def run_map(n: int) -> dict[str, Any]:
    import orchestrix as ox

    with ox.Orchestrator(mode="multiprocessing", nb_workers=NB_WORKERS) as orch:
        orch.submit(inc, 0).result()
        before = psutil.Process().memory_info().rss
        with PeakRss() as rss:
            count, wall, cpu = _timed(lambda: sum(1 for _ in orch.map(inc, range(n))))
        tasks = orch.summary().tasks_done - 1
    assert count == n
    return {
        "n": n,
        "run_us": wall / n * 1e6,
        "cpu_us": cpu / n * 1e6,
        "peak_bytes_per_item": (rss.peak - before) / n,
        "tasks": tasks,
    }


def run_batching(engine: str) -> dict[str, Any]:
    items = range(BATCHING_ITEMS)
    expected = [i + 1 for i in items]
    if engine == "orchestrix":
        import orchestrix as ox

        with ox.Orchestrator(mode="multiprocessing", nb_workers=NB_WORKERS) as orch:
            orch.submit(inc, 0).result()
            got, wall, cpu = _timed(lambda: list(orch.map(inc, items)))
            tasks = orch.summary().tasks_done - 1
    else:
        from joblib import Parallel, delayed

        with Parallel(n_jobs=NB_WORKERS) as parallel:
            parallel(delayed(inc)(i) for i in range(NB_WORKERS))
            got, wall, cpu = _timed(lambda: parallel(delayed(inc)(i) for i in items))
            tasks = None
    assert got == expected
    return {"engine": engine, "wall_s": wall, "cpu_us": cpu / BATCHING_ITEMS * 1e6, "tasks": tasks}


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, os.path.join(here, "bench_scale.py"), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(rows: list[dict[str, Any]], field: str) -> float:
    return statistics.median(row[field] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="batching,compute,map")
    parser.add_argument("--compute-sizes", default="10000,100000,1000000")
    parser.add_argument("--map-sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, arg = args.child
        runner = {"compute": run_compute, "map": run_map}.get(workload)
        print(json.dumps(runner(int(arg)) if runner else run_batching(arg)))
        return
    if args.quick:
        args.compute_sizes, args.map_sizes, args.repeat = "2000,20000", "10000,100000", 1
    workloads = args.workloads.split(",")
    if "batching" in workloads:
        rounds: dict[str, list[dict[str, Any]]] = {"orchestrix": [], "joblib": []}
        for index in range(args.repeat):
            order = ["orchestrix", "joblib"] if index % 2 == 0 else ["joblib", "orchestrix"]
            for engine in order:
                rounds[engine].append(_child(["batching", engine], args.timeout))
        walls = {engine: _median(rows, "wall_s") for engine, rows in rounds.items()}
        print(f"batching, {BATCHING_ITEMS:,} tiny items, medians of {args.repeat} rounds:")
        for engine, rows in rounds.items():
            spread = [round(row["wall_s"], 3) for row in rows]
            print(
                f"  {engine:<10} wall {walls[engine]:.3f} s, "
                f"{walls[engine] / BATCHING_ITEMS * 1e6:.2f} us/item, caller CPU "
                f"{_median(rows, 'cpu_us'):.2f} us/item, walls {spread}"
                + (f", tasks {rows[0]['tasks']}" if rows[0]["tasks"] is not None else "")
            )
        print(f"  joblib / orchestrix (wall): {walls['joblib'] / walls['orchestrix']:.2f}")
    for workload, sizes in (("compute", args.compute_sizes), ("map", args.map_sizes)):
        if workload not in workloads:
            continue
        print(f"{workload}, medians of {args.repeat} runs:")
        for size in sizes.split(","):
            rows = [_child([workload, size], args.timeout) for _ in range(args.repeat)]
            fields = [f for f in rows[0] if f != "n"]
            text = ", ".join(f"{f} {_median(rows, f):,.2f}" for f in fields)
            print(f"  n={int(size):>10,}: {text}", flush=True)


if __name__ == "__main__":
    main()
