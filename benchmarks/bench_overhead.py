"""Per-task overhead of the sequential mode, side by side with the peers in one run.

The sequential mode is the oracle and the debugging mode: its cost per task is the cost of the
engine itself (graph, keys, scheduling), with no process or pickling in the way. Peers: a plain
Python loop (the floor), ``concurrent.futures.ThreadPoolExecutor(1)`` submit, and dask's
synchronous scheduler on the same graph.

Run: ``python benchmarks/bench_overhead.py``. Prints a markdown table (medians of 5 runs).
"""

from __future__ import annotations

import concurrent.futures
import statistics
import time
from collections.abc import Callable

import dask

import orchestrix as ox

N_TASKS = 10_000


def noop(x):
    return x


def add(a, b):
    return a + b


def median_seconds(work: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graph_orchestrix(orch: ox.Orchestrator) -> Callable[[], object]:
    task_noop, task_add = ox.task(noop), ox.task(add)

    def work():
        leaves = [task_noop(i) for i in range(N_TASKS // 2)]
        pairs = [task_add(leaves[i], leaves[i + 1]) for i in range(0, len(leaves) - 1, 2)]
        return orch.compute(pairs)

    return work


def graph_dask() -> object:
    delayed_noop, delayed_add = dask.delayed(noop), dask.delayed(add)
    leaves = [delayed_noop(i) for i in range(N_TASKS // 2)]
    pairs = [delayed_add(leaves[i], leaves[i + 1]) for i in range(0, len(leaves) - 1, 2)]
    return dask.compute(pairs, scheduler="sync")


def submit_orchestrix(orch: ox.Orchestrator) -> Callable[[], object]:
    return lambda: [f.result() for f in [orch.submit(noop, i) for i in range(N_TASKS // 5)]]


def submit_threadpool() -> object:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return [f.result() for f in [pool.submit(noop, i) for i in range(N_TASKS // 5)]]


def main() -> None:
    loop = median_seconds(lambda: [add(noop(i), noop(i + 1)) for i in range(0, N_TASKS // 2, 2)])
    rows = []
    with ox.Orchestrator(mode="sequential") as orch:
        rows.append(
            (
                "graph, 7,500 tasks: orchestrix sequential",
                median_seconds(graph_orchestrix(orch)),
                7500,
            )
        )
        rows.append(("graph, 7,500 tasks: dask scheduler='sync'", median_seconds(graph_dask), 7500))
        rows.append(
            (
                "submit, 2,000 calls: orchestrix sequential",
                median_seconds(submit_orchestrix(orch)),
                2000,
            )
        )
        rows.append(
            ("submit, 2,000 calls: ThreadPoolExecutor(1)", median_seconds(submit_threadpool), 2000)
        )
    print("| workload | seconds | tasks/s | us/task |")
    print("|---|---|---|---|")
    for name, seconds, count in rows:
        print(f"| {name} | {seconds:.3f} | {count / seconds:,.0f} | {1e6 * seconds / count:.1f} |")
    print(f"\nplain Python loop doing the same calls: {loop * 1e3:.2f} ms")
    ours, peer = rows[0][1], rows[1][1]
    print(f"graph: dask sync / orchestrix sequential = {peer / ours:.2f}x")
    ours, peer = rows[2][1], rows[3][1]
    print(f"submit: ThreadPoolExecutor / orchestrix sequential = {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
