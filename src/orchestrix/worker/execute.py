"""Running one unit of work: what every backend calls, in whatever process it runs in."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..failures import Failure, TaskFailure
from ..graph.factorize import WorkUnit
from ..graph.shared import Shared
from ..graph.tasks import Ref, TaskNode, map_nested
from ..records import Usage

__all__ = ["CURRENT", "UnitFailed", "UnitOutcome", "call_task", "resolve", "run_unit"]

#: ``CURRENT.key``: the key of the task this thread is running (None between tasks), for logs
CURRENT = threading.local()


@dataclass
class UnitOutcome:
    """What a backend reports for a finished unit: its output, or which of its tasks failed.

    ``started`` (epoch seconds) and ``walls`` (seconds, one per task that ran, the failed one
    last) time the tasks; ``growth_mb`` is set by ``loop_testing``, one per task that ran.
    """

    unit: WorkUnit
    value: Any = None
    failure: Failure | None = None  # what a task raised, or the error the backend decided on
    started: float = 0.0
    walls: list[float] = field(default_factory=list)
    growth_mb: list[float] | None = None
    usage: Usage | None = None  # where measured over the unit alone

    def cpu_per_wall(self) -> float:
        """CPU seconds per second of the tasks' wall time, where ``usage`` was measured."""
        wall = sum(self.walls)
        return self.usage.cpu_s / wall if self.usage is not None and wall > 0 else 0.0


class TaskCaller(Protocol):
    """Runs one task (the profilers of :mod:`orchestrix.worker.observe` wrap it)."""

    loop_testing: bool
    last_growth_mb: float

    def call(self, node: TaskNode, values: Mapping[str, Any]) -> Any: ...


def run_unit(
    unit: WorkUnit,
    inputs: Mapping[str, Any],
    *,
    remote: bool = False,
    caller: TaskCaller | None = None,
) -> UnitOutcome:
    """Run the tasks of ``unit`` in order; ``inputs`` maps dependency keys to their outputs.

    Intermediate outputs of a fused chain live only in this call, each until its last reader
    has run (``unit.release``). With ``remote=True`` a failure
    carries its formatted traceback, for a process that cannot ship the traceback object.
    ``caller`` runs each task under a profiler; each task's wall time is always measured.
    """
    values: dict[str, Any] = dict(inputs)
    call = call_task if caller is None else caller.call
    growth: list[float] | None = [] if caller is not None and caller.loop_testing else None
    outcome = UnitOutcome(unit, started=time.time(), growth_mb=growth)
    walls = outcome.walls
    clock = time.perf_counter
    value: Any = None
    release = unit.release
    for index, node in enumerate(unit.tasks):
        CURRENT.key = node.key
        begin = clock()
        try:
            value = call(node, values)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... too
            # Whatever the task raises is the task's failure, not the worker's: a worker that
            # exited on a task's SystemExit would be taken for a crash and the task retried.
            # (The sequential backend tells a real Ctrl-C apart and lets it through.)
            walls.append(clock() - begin)
            CURRENT.key = None
            text = "".join(traceback.format_exception(exc)) if remote else None
            outcome.failure = TaskFailure(node.key, node.name, exc, text)
            return outcome
        walls.append(clock() - begin)
        if growth is not None:
            growth.append(caller.last_growth_mb)  # type: ignore[union-attr]
        values[node.key] = value
        if release:  # values no later task reads are dropped now, not at the end of the chain
            for key in release[index]:
                del values[key]
    CURRENT.key = None
    outcome.value = value
    return outcome


def call_task(node: TaskNode, values: Mapping[str, Any]) -> Any:
    """Call a task's function with its arguments resolved. Every task runs under this frame:
    the memray summary looks for it to attribute memory to task names."""
    if node.has_refs:
        args = resolve(node.args, values)
        kwargs = resolve(node.kwargs, values)
    else:
        args, kwargs = node.args, node.kwargs
    result = node.func(*args, **kwargs)
    if node.nout > 1 and not (isinstance(result, (tuple, list)) and len(result) == node.nout):
        got = f"{type(result).__name__} of length {len(result)}" if _sized(result) else repr(result)
        raise TypeError(f"task declared nout={node.nout} but returned {got}")
    return result


def resolve(obj: Any, values: Mapping[str, Any]) -> Any:
    """Replace each Ref and Shared handle in ``obj`` (nested in lists, tuples, dicts) by the
    value it stands for."""

    def value_of(ref: Ref | Shared) -> Any:
        if isinstance(ref, Shared):
            return ref.get()
        value = values[ref.key]
        return value if ref.index is None else value[ref.index]

    return map_nested(obj, (Ref, Shared), value_of)


class UnitFailed(Exception):
    """Raised by a unit run inside another scheduler (dask), carrying the task failure, so that
    the scheduler stops its dependents and the caller learns which task failed."""

    def __init__(self, failure: Failure, restart_worker: str | None = None) -> None:
        # For dask's logs only: the caller reports ``failure`` itself.
        raised = failure if not isinstance(failure, TaskFailure) else failure.exception
        super().__init__(f"task {failure.name!r} failed: {raised!r}")
        self.failure = failure
        self.restart_worker = restart_worker

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnitFailed, (self.failure, self.restart_worker))


def _sized(obj: Any) -> bool:
    try:
        len(obj)
    except TypeError:
        return False
    return True
