"""Cut a task graph into units of work, fusing sequential chains.

A unit is a chain of tasks run as one call in one worker: only the last task's output leaves the
worker. Task T is fused into its consumer C when C is T's only consumer and T is C's only task
dependency, and T's output is not itself requested by the caller. Consumers are counted per task,
not per output, so a 2-output task that feeds two different consumers is never duplicated.

Each fused unit also carries its release schedule: after which of its tasks each value it holds
(an input or an intermediate output) has no reader left, so that running the chain holds only
what its remaining steps need rather than every intermediate value at once.

The function is pure and linear in the size of the graph.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .tasks import Graph, TaskNode

__all__ = ["WorkUnit", "factorize", "one_unit_per_task", "release_schedule"]


@dataclass(frozen=True, eq=False, slots=True)
class WorkUnit:
    """Tasks run in order in one call; ``deps`` are the keys of the units whose outputs it reads.

    ``release[i]`` names the values that no task after task ``i`` reads (see
    :func:`release_schedule`); empty when there is nothing to release (a single task).
    """

    tasks: tuple[TaskNode, ...]
    deps: tuple[str, ...]
    release: tuple[tuple[str, ...], ...] = ()

    @property
    def key(self) -> str:
        """The key of the unit's last task, whose output is the unit's output."""
        return self.tasks[-1].key

    @property
    def name(self) -> str:
        return self.tasks[-1].name

    def __reduce__(self) -> tuple[Any, ...]:  # faster than the slots dataclass default
        if self.release:
            return (WorkUnit, (self.tasks, self.deps, self.release))
        return (WorkUnit, (self.tasks, self.deps))

    def __repr__(self) -> str:
        names = "->".join(t.name for t in self.tasks)
        return f"<WorkUnit {self.key} ({names})>"


def one_unit_per_task(graph: Graph) -> list[WorkUnit]:
    """Every task its own unit (``factorize_tasks=False``)."""
    return [WorkUnit((node,), tuple(dep.key for dep in node.deps)) for node in graph.nodes.values()]


def factorize(graph: Graph, targets: Collection[str]) -> list[WorkUnit]:
    """Fuse every maximal chain of ``graph`` into one unit; ``targets`` are keys the caller reads.

    Units come out in a topological order (each unit after the units it depends on).
    """
    targets = targets if isinstance(targets, (set, frozenset)) else set(targets)
    consumers = _count_consumers(graph)
    successor: dict[str, TaskNode] = {}
    fused_into_predecessor: set[str] = set()
    for node in graph.nodes.values():
        if len(node.deps) != 1:
            continue
        (dep,) = node.deps
        if consumers[dep.key] == 1 and dep.key not in targets:
            successor[dep.key] = node
            fused_into_predecessor.add(node.key)

    chain_ending_at: dict[str, WorkUnit] = {}
    for node in graph.nodes.values():
        if node.key in fused_into_predecessor:
            continue  # it belongs to the chain that starts at its head
        chain = [node]
        while chain[-1].key in successor:
            chain.append(successor[chain[-1].key])
        tasks = tuple(chain)
        deps = tuple(dep.key for dep in node.deps)
        unit = WorkUnit(tasks, deps, release_schedule(tasks) if len(tasks) > 1 else ())
        chain_ending_at[unit.key] = unit
    # Emit each unit where its last task stands in the graph order: that order is topological for
    # units too, since a unit's inputs are outputs of nodes that precede its head.
    return [chain_ending_at[key] for key in graph.nodes if key in chain_ending_at]


def release_schedule(tasks: tuple[TaskNode, ...]) -> tuple[tuple[str, ...], ...]:
    """For each task of a unit, the keys of the values whose last reader in the unit it is.

    The unit's own output (its last task's value) is never released: it is what leaves the
    worker. No other value of a unit is read outside it: factorize ends a chain at a target and
    at a task with more than one consumer (a multi-output task counts once, whatever outputs its
    consumers read), so everything else in a chain is read only by the tasks after it.
    """
    last_reader: dict[str, int] = {}
    for index, node in enumerate(tasks):
        for dep in node.deps:
            last_reader[dep.key] = index
    last_reader.pop(tasks[-1].key, None)
    schedule: list[list[str]] = [[] for _ in tasks]
    for key, index in last_reader.items():
        schedule[index].append(key)
    return tuple(tuple(keys) for keys in schedule)


def _count_consumers(graph: Graph) -> dict[str, int]:
    """Number of distinct nodes that read each node's output (any of its outputs)."""
    counts = dict.fromkeys(graph.nodes, 0)
    for node in graph.nodes.values():
        for dep in node.deps:  # deps are unique per node: one count per consumer, not per use
            counts[dep.key] += 1
    return counts
