"""Cost of chain fusion: ``orchestrix.graph.factorize.factorize`` side by side with dask's fusion.

The graph is made of groups of 25 tasks: 6 independent chains of 4 tasks, and one fan-in task that
reads the 6 chain ends (the targets). Each chain fuses into one unit and the fan-in task stays its
own, so a group gives 7 units.

Peers, on the equivalent plain dask graph (a dict of tuples, same shape):

* ``dask.optimization.fuse_linear``: dask's linear-chain fusion, the same rule as orchestrix's
  (a task is fused into its only dependent when that dependent has no other dependency). It is
  the reference of the ratio column. ``rename_keys=False``, since orchestrix does not rename.
* ``dask.optimization.fuse(..., ave_width=1)``: dask's default graph optimisation, which also
  fuses reductions; reported for context only (it does more work and fuses more).

dask computes the dependencies of its graph inside the call; orchestrix's graph already links
each node to its dependencies, so the table also gives ``build_graph`` (collecting the nodes of
the targets) and the time of calling the tasks. Times are the best of 5 (``time.perf_counter``).

Run: ``python benchmarks/bench_factorize.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dask
from dask.optimization import fuse, fuse_linear

import orchestrix as ox
from orchestrix.graph.factorize import factorize
from orchestrix.graph.tasks import Delayed, Graph, build_graph

SIZES = (10_000, 100_000)
REPEAT = 5
CHAIN_LENGTH = 4
CHAINS_PER_GROUP = 6
GROUP_SIZE = CHAINS_PER_GROUP * CHAIN_LENGTH + 1  # 25 tasks
UNITS_PER_GROUP = CHAINS_PER_GROUP + 1


def inc(x: int) -> int:
    return x + 1


def total(*values: int) -> int:
    return sum(values)


inc_task = ox.task(inc)
total_task = ox.task(total)


def best_of(work: Callable[[], Any], repeat: int = REPEAT) -> tuple[float, Any]:
    """The best wall time of ``repeat`` calls, and the result of the last call."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def build_orchestrix(n_tasks: int) -> list[Delayed]:
    """Call the tasks: returns the fan-in Delayed of every group (the targets)."""
    targets = []
    for group in range(n_tasks // GROUP_SIZE):
        ends = []
        for chain in range(CHAINS_PER_GROUP):
            value = inc_task(group * CHAINS_PER_GROUP + chain)  # a distinct head per chain
            for _ in range(CHAIN_LENGTH - 1):
                value = inc_task(value)
            ends.append(value)
        targets.append(total_task(*ends))
    return targets


def build_dask(n_tasks: int) -> tuple[dict[Any, Any], list[str]]:
    """The same graph as a plain dask graph of tuples; returns it and its target keys."""
    dsk: dict[Any, Any] = {}
    targets = []
    for group in range(n_tasks // GROUP_SIZE):
        ends = []
        for chain in range(CHAINS_PER_GROUP):
            key = f"inc-{group}-{chain}-0"
            dsk[key] = (inc, group * CHAINS_PER_GROUP + chain)
            for step in range(1, CHAIN_LENGTH):
                previous, key = key, f"inc-{group}-{chain}-{step}"
                dsk[key] = (inc, previous)
            ends.append(key)
        target = f"total-{group}"
        dsk[target] = (total, *ends)
        targets.append(target)
    return dsk, targets


def measure(n_tasks: int) -> dict[str, Any]:
    build_s, targets = best_of(lambda: build_orchestrix(n_tasks))
    collect_s, graph = best_of(lambda: build_graph(targets))
    assert isinstance(graph, Graph) and len(graph) == n_tasks
    keys = {t.key for t in targets}
    ox_s, units = best_of(lambda: factorize(graph, keys))

    dask_build_s, (dsk, dask_keys) = best_of(lambda: build_dask(n_tasks))
    assert len(dsk) == n_tasks
    linear_s, (linear, _) = best_of(lambda: fuse_linear(dsk, keys=dask_keys, rename_keys=False))
    fuse_s, (fused, _) = best_of(lambda: fuse(dsk, keys=dask_keys, ave_width=1, rename_keys=False))

    expected_units = n_tasks // GROUP_SIZE * UNITS_PER_GROUP
    assert len(units) == expected_units, (len(units), expected_units)
    return {
        "tasks": n_tasks,
        "build_s": build_s,
        "collect_s": collect_s,
        "ox_s": ox_s,
        "ox_units": len(units),
        "dask_build_s": dask_build_s,
        "linear_s": linear_s,
        "linear_tasks": len(linear),
        "fuse_s": fuse_s,
        "fuse_tasks": len(fused),
    }


def main() -> None:
    rows = [measure(n) for n in SIZES]
    print(f"dask {dask.__version__}, orchestrix {ox.__version__}; best of {REPEAT}\n")
    print(
        "| tasks | orchestrix factorize (s) | dask fuse_linear (s) | ratio dask/orchestrix "
        "| orchestrix units | dask fused tasks |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tasks']:,} | {r['ox_s']:.4f} | {r['linear_s']:.4f} "
            f"| {r['linear_s'] / r['ox_s']:.2f} | {r['ox_units']:,} | {r['linear_tasks']:,} |"
        )
    print(
        "\nFor context: dask's default optimisation, fuse(ave_width=1), which also fuses fan-in:\n"
    )
    print("| tasks | dask fuse (s) | ratio dask/orchestrix | dask fused tasks |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tasks']:,} | {r['fuse_s']:.4f} | {r['fuse_s'] / r['ox_s']:.2f} "
            f"| {r['fuse_tasks']:,} |"
        )
    print("\nGraph building:\n")
    print(
        "| tasks | orchestrix: calling the tasks (s) | orchestrix build_graph (s) "
        "| dask: building the dict (s) |"
    )
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tasks']:,} | {r['build_s']:.4f} | {r['collect_s']:.4f} "
            f"| {r['dask_build_s']:.4f} |"
        )


if __name__ == "__main__":
    main()
