"""The engine: turns targets into units, hands ready units to a backend, routes results.

It is backend-independent. Ready units are handed over depth first: the dependents that a finished
unit makes ready go before units that were ready earlier, so started chains finish before new ones
open and intermediate values are released early. A value is dropped as soon as every unit that
reads it has been given it.

A run has up to two phases: with ``canary=N`` the subgraphs of the first N targets run first. With
a result store (resume), stored targets are loaded instead of planned, and each target's result is
stored before the caller sees it. Task states go to the monitor (registered, stopped, loaded).
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import failures
from ..backends.base import Backend
from ..errors import TaskError
from ..failures import Failure
from ..graph.factorize import WorkUnit, factorize, one_unit_per_task
from ..graph.inputs import describe_node
from ..graph.tasks import Delayed, TaskNode, build_graph
from ..monitoring.monitor import Monitor
from ..worker.execute import UnitOutcome
from .store import ResultStore

__all__ = ["Engine", "reported_error"]

logger = logging.getLogger("orchestrix")


class Engine:
    """Runs graphs on one backend. Each call of :meth:`run` is independent of the others.

    ``canary=N`` runs the subgraphs of the first N targets before the others, and stops with
    :class:`CanaryError` if one fails; ``store`` (a :class:`ResultStore`) keeps each target's
    result and hands back those it holds instead of computing them again (resume).
    """

    def __init__(
        self,
        backend: Backend,
        monitor: Monitor,
        factorize_tasks: bool = True,
        canary: int = 0,
        store: ResultStore | None = None,
    ) -> None:
        self.backend = backend
        self.monitor = monitor
        self.factorize_tasks = factorize_tasks
        self.canary = canary
        self.store = store

    def plan(self, targets: Sequence[Delayed]) -> list[WorkUnit]:
        """The units that running ``targets`` would hand to the backend, in topological order."""
        graph = build_graph(targets)
        if self.factorize_tasks:
            return factorize(graph, {t.key for t in targets})
        return one_unit_per_task(graph)

    def run(
        self,
        targets: Sequence[Delayed],
        watch: Callable[[list[WorkUnit]], Callable[[], None] | None] | None = None,
        timeout: float | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(position in targets, value)`` as each target finishes.

        With ``timeout`` (seconds from this call), a run not finished by then raises the
        builtin :class:`TimeoutError` (as ``concurrent.futures`` does) and stops, as on a
        failure.

        Raises the :class:`TaskError` of the first target that fails (a target downstream of a
        failed task gets an :class:`UpstreamTaskError` naming it); nothing more is started then.
        ``watch(units)`` is called once planned (a progress bar starts); what it returns is
        called when the run ends. Stored targets (resume) come first; with ``canary`` the first
        targets run before the others, and a failure among them raises :class:`CanaryError`.
        """
        targets = list(targets)
        deadline = None if timeout is None else time.monotonic() + timeout
        yielded = 0
        try:
            for item in self._run(targets, watch, deadline):
                yielded += 1
                yield item
        except _Expired:
            left = len(targets) - yielded
            raise TimeoutError(
                f"{left} (of {len(targets)}) targets unfinished after timeout={timeout} s"
            ) from None

    def _run(
        self,
        targets: list[Delayed],
        watch: Callable[[list[WorkUnit]], Callable[[], None] | None] | None,
        deadline: float | None,
    ) -> Iterator[tuple[int, Any]]:
        stored, todo = self._split_stored(targets)
        phases = [
            (positions, self.plan([targets[i] for i in positions]), canary)
            for positions, canary in self._phases(targets, todo)
        ]
        monitor = self.monitor
        for _, units, canary in reversed(phases):  # a unit in both phases is the canary's
            monitor.note_registered(units, canary)
        every_unit = [unit for _, units, _ in phases for unit in units]
        logger.debug("run: %d targets, %d units", len(targets), len(every_unit))
        stop_watching = watch(every_unit) if watch is not None and every_unit else None
        try:
            yield from self._load(targets, stored)
            for positions, units, canary in phases:
                if len(positions) == len(targets):  # one phase of every target: no remapping
                    yield from self._run_phase(targets, None, units, canary, deadline)
                else:
                    phase = [targets[i] for i in positions]
                    yield from self._run_phase(phase, positions, units, canary, deadline)
        finally:
            if stop_watching is not None:
                stop_watching()

    def _run_phase(
        self,
        targets: list[Delayed],
        positions: list[int] | None,
        units: list[WorkUnit],
        canary: bool,
        deadline: float | None,
    ) -> Iterator[tuple[int, Any]]:
        """Run the units of ``targets``; ``positions``: where each target is in the caller's
        list (None: the same place)."""
        run = _Run(units, targets, self.monitor, self.store, deadline)
        finished = False
        try:
            driven = (run.drive_graph if self.backend.runs_graphs else run.drive)(self.backend)
            if positions is None:
                yield from driven
            else:
                for position, value in driven:
                    yield positions[position], value
            finished = True
        except TaskError as error:
            if canary:
                raise failures.canary_error(error, self.canary) from error
            raise
        finally:
            self.backend.cancel(list(run.in_flight.values()))
            if not finished:  # those still running are killed
                self.monitor.note_stopped(units)

    def _split_stored(self, targets: list[Delayed]) -> tuple[dict[str, list[int]], list[int]]:
        """The positions of targets whose results are stored (by key), and of the others."""
        if self.store is None:
            return {}, list(range(len(targets)))
        stored: dict[str, list[int]] = {}
        todo = []
        known: dict[str, bool] = {}
        for position, target in enumerate(targets):
            key = target.key
            if key not in known:
                known[key] = self.store.contains(key)
            if known[key]:
                stored.setdefault(key, []).append(position)
            else:
                todo.append(position)
        return stored, todo

    def _load(
        self, targets: list[Delayed], stored: dict[str, list[int]]
    ) -> Iterator[tuple[int, Any]]:
        if not stored:
            return
        assert self.store is not None
        loaded = [(key, targets[positions[0]].name) for key, positions in stored.items()]
        self.monitor.note_loaded(loaded)
        for key, positions in stored.items():
            value = self.store.load(key)
            for position in positions:
                index = targets[position].index
                yield position, value if index is None else value[index]

    def _phases(self, targets: list[Delayed], todo: list[int]) -> list[tuple[list[int], bool]]:
        """``(positions, canary)`` of each phase: the canary's targets first, if there is a
        rest to hold back."""
        if not todo:
            return []
        if not self.canary:
            return [(todo, False)]
        keys = list(dict.fromkeys(targets[position].key for position in todo))
        if len(keys) <= self.canary:
            return [(todo, False)]
        first = set(keys[: self.canary])
        canary = [position for position in todo if targets[position].key in first]
        rest = [position for position in todo if targets[position].key not in first]
        return [(canary, True), (rest, False)]


class _Run:
    """The state of one run: what waits for what, which values are still needed."""

    def __init__(
        self,
        units: list[WorkUnit],
        targets: Sequence[Delayed],
        monitor: Monitor,
        store: ResultStore | None = None,
        deadline: float | None = None,
    ) -> None:
        self.monitor = monitor
        self.store = store
        self.deadline = deadline  # time.monotonic() past which the run raises _Expired
        # Per unit, the run keeps no container that the cyclic GC must walk unless it holds
        # something: a million pending units would otherwise make every full collection walk
        # millions of empty lists (the caller's cost per task grew with the number of tasks).
        # Counts are ints in dicts of str (untracked); readers exist only for units read;
        # a target's place is a pair of ints (untracked after a collection), and only a key
        # asked for more than once has a list of its other places.
        self.units = {unit.key: unit for unit in units}
        self.missing_inputs = {unit.key: len(unit.deps) for unit in units}
        self.readers: dict[str, list[str]] = {}
        for unit in units:
            for dep in unit.deps:
                readers = self.readers.get(dep)
                if readers is None:
                    self.readers[dep] = [unit.key]
                else:
                    readers.append(unit.key)
        self.unread = {key: len(readers) for key, readers in self.readers.items()}
        self.targets_at: dict[str, tuple[int, int | None]] = {}
        self.more_places: dict[str, list[tuple[int, int | None]]] = {}
        for position, target in enumerate(targets):
            if target.key not in self.targets_at:
                self.targets_at[target.key] = (position, target.index)
            else:
                self.more_places.setdefault(target.key, []).append((position, target.index))
        self.values: dict[str, Any] = {}
        self.ready = deque(unit for unit in units if not unit.deps)
        self.in_flight: dict[str, int] = {}  # unit key -> backend job id
        self.outcomes: queue.SimpleQueue[UnitOutcome] = queue.SimpleQueue()

    def drive_graph(self, backend: Backend) -> Iterator[tuple[int, Any]]:
        """Hand the whole graph over at once, to a backend that schedules graphs itself; only
        the targets' outcomes come back."""
        units = list(self.units.values())
        target_keys = list(self.targets_at)
        self.in_flight["graph"] = backend.submit_graph(units, target_keys, self.outcomes.put)
        for _ in target_keys:
            outcome = self._next_outcome()
            if outcome.failure is not None:
                raise self._target_error(outcome)
            yield from self._yield_targets(outcome, backend)

    def drive(self, backend: Backend) -> Iterator[tuple[int, Any]]:
        left = len(self.units)
        while left:
            capacity = backend.capacity()
            while self.ready and len(self.in_flight) < capacity:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise _Expired  # no new work after it (sequential: between tasks)
                unit = self.ready.popleft()
                inputs = self._take_inputs(unit)
                # The sink may fire (in another thread) before submit returns: it only queues.
                self.in_flight[unit.key] = backend.submit(unit, inputs, self.outcomes.put)
            if not self.in_flight and self.outcomes.empty():
                raise RuntimeError("orchestrix engine: no unit ready and none running (a bug)")
            outcome = self._next_outcome()
            self.in_flight.pop(outcome.unit.key, None)
            left -= 1
            if outcome.failure is not None:
                raise self._target_error(outcome)
            yield from self._finish(outcome, backend)

    def _next_outcome(self) -> UnitOutcome:
        """The next outcome a backend reports; blocks (interruptible by Ctrl-C) until then, or
        until the deadline."""
        if self.deadline is None:
            return self.outcomes.get()
        try:
            return self.outcomes.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            raise _Expired from None

    def _take_inputs(self, unit: WorkUnit) -> dict[str, Any]:
        inputs = {dep: self.values[dep] for dep in unit.deps}
        for dep in unit.deps:
            self.unread[dep] -= 1
            if not self.unread[dep]:
                del self.values[dep]  # every reader has it now
        return inputs

    def _finish(self, outcome: UnitOutcome, backend: Backend) -> Iterator[tuple[int, Any]]:
        key = outcome.unit.key
        if key in self.unread:
            self.values[key] = outcome.value
        newly_ready = []
        for reader in self.readers.get(key, ()):
            self.missing_inputs[reader] -= 1
            if not self.missing_inputs[reader]:
                newly_ready.append(self.units[reader])
        self.ready.extendleft(reversed(newly_ready))  # depth first, in graph order
        yield from self._yield_targets(outcome, backend)

    def _yield_targets(self, outcome: UnitOutcome, backend: Backend) -> Iterator[tuple[int, Any]]:
        key = outcome.unit.key
        first = self.targets_at.get(key)
        if first is None:
            return
        value = backend.materialize(outcome.value)
        if self.store is not None:  # before the caller sees it: a value seen is a value kept
            self.store.save(key, value)
        for position, index in (first, *self.more_places.get(key, ())):
            yield position, value if index is None else value[index]

    def _target_error(self, outcome: UnitOutcome) -> TaskError:
        """The error to raise: the first target (in input order) that the failure reaches."""
        failure = outcome.failure
        assert failure is not None
        node = self._node_of(outcome.unit, failure.key)
        inputs = None if node is None else describe_node(node)
        cause = reported_error(self.monitor, failure, inputs)
        downstream = self._downstream(outcome.unit.key)
        hit = min((self.targets_at[key][0], key) for key in downstream if key in self.targets_at)
        target_key = hit[1]
        if target_key == cause.key:
            return cause
        name = self.units[target_key].name
        return failures.upstream_error(target_key, name, failure, cause, inputs)

    def _node_of(self, unit: WorkUnit, key: str) -> TaskNode | None:
        """The task ``key`` that failed: in the unit reported (a verdict names the unit by its
        last task), or upstream of it (a backend that runs graphs reports the target's unit)."""
        for candidate in (unit, self.units.get(key)):
            for node in candidate.tasks if candidate is not None else ():
                if node.key == key:
                    return node
        # inside a fused unit upstream: a walk, once per failed run
        return next((n for u in self.units.values() for n in u.tasks if n.key == key), None)

    def _downstream(self, key: str) -> list[str]:
        seen = {key}
        order = [key]
        for current in order:  # grows while iterating: a breadth-first walk
            for reader in self.readers.get(current, ()):
                if reader not in seen:
                    seen.add(reader)
                    order.append(reader)
        return order


class _Expired(Exception):
    """The run's deadline passed (the engine turns it into a TimeoutError with the counts)."""


def reported_error(monitor: Any, failure: Failure, inputs: str | None = None) -> TaskError:
    """The one place in the caller's path where a backend's failure becomes the caller's error:
    the run's records note it, then :func:`failures.caller_error` converts it (once).
    ``inputs`` is the failed call in one line (:func:`describe_node`), for both."""
    monitor.note_failure(failure, failures.worker_of(failure), inputs)
    return failures.caller_error(failure, inputs)
