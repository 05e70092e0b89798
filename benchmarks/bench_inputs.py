"""Cost of naming a task's inputs: :func:`orchestrix.graph.inputs.describe_node` per task.

orchestrix builds the line only for a failed task. This measures what it would cost for every
task (the question of giving ``on_task_done`` events of tasks done their inputs too), next to the
caller's own cost of a task: a sequential run of noop tasks, per task.

Kinds of arguments: one int; a path and a keyword; an upstream output and a float; a 256x256
array (a tile's window); a small dict of options; and a map item (``describe_call``). Times are
the best of 5 (``time.perf_counter``), in microseconds per task.

On 2026-12-02 (2 busy cores): 6.6 (int), 8.7 (path), 8.6 (upstream), 12.7 (array), 11.7 (dict),
6.6 (map item), against 12.0 for a sequential noop task; with the function's signature cached
(not done: a cache keeps functions alive) 1.3, 1.8, 1.8, 5.3, 4.8 and 1.2.

Run: ``python benchmarks/bench_inputs.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

import orchestrix as ox
from orchestrix.graph.inputs import describe_call, describe_node

N = 100_000
REPEAT = 5


@ox.task
def load(i):
    return i


@ox.task
def read(path, *, mode="r"):
    return path


@ox.task
def smooth(image, sigma=1.0):
    return image


@ox.task
def noop(i):
    return i


def square(x):
    return x * x


def best(fn: Callable[[], Any], count: int) -> float:
    """Microseconds per item, the best of REPEAT runs of ``fn`` (which does ``count`` items)."""
    times = []
    for _ in range(REPEAT):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return min(times) / count * 1e6


def main() -> None:
    tile = np.zeros((256, 256))
    options = [{"band": i, "scale": 0.5, "tags": ["a", "b"]} for i in range(N)]
    kinds = {
        "load(i=3)": [load(i).node for i in range(N)],
        "read(path=..., mode=...)": [
            read(f"/data/t_{i:04d}.tif", mode="rb").node for i in range(N)
        ],
        "smooth(<upstream>, sigma)": [smooth(load(i), sigma=2.0).node for i in range(N)],
        "smooth(array 256x256)": [smooth(tile, sigma=float(i)).node for i in range(N // 10)],
        "read(dict of options)": [read(option).node for option in options],
    }
    print(f"{'arguments':<28} {'us per task':>12}")
    for label, nodes in kinds.items():

        def describe_all(nodes: list[Any] = nodes) -> None:
            for node in nodes:
                describe_node(node)

        print(f"{label:<28} {best(describe_all, len(nodes)):>12.2f}")
    items = [(i,) for i in range(N)]

    def describe_items() -> None:
        for item in items:
            describe_call(square, "square", item)

    print(f"{'map item square(x=i)':<28} {best(describe_items, N):>12.2f}")
    with ox.Orchestrator(mode="sequential", progress=False) as orch:
        targets = [noop(i) for i in range(N)]
        caller = best(lambda: orch.compute(targets), N)
    print(f"{'(a sequential noop task)':<28} {caller:>12.2f}")


if __name__ == "__main__":
    main()
