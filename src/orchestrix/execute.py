"""Running one unit of work: what every backend calls, in whatever process it runs in."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TaskError
from .factorize import WorkUnit
from .graph import Ref, TaskNode, map_nested

__all__ = ["TaskFailure", "UnitOutcome", "resolve", "run_unit"]


@dataclass
class TaskFailure:
    """A task of a unit raised. ``traceback_text`` is set when it must cross a process boundary."""

    key: str
    name: str
    exception: BaseException
    traceback_text: str | None = None
    error: TaskError | None = None  # set when the backend already knows the error to report


@dataclass
class UnitOutcome:
    """What a backend reports for a finished unit: its output, or which of its tasks failed."""

    unit: WorkUnit
    value: Any = None
    failure: TaskFailure | None = None


def run_unit(unit: WorkUnit, inputs: Mapping[str, Any], *, remote: bool = False) -> UnitOutcome:
    """Run the tasks of ``unit`` in order; ``inputs`` maps dependency keys to their outputs.

    Intermediate outputs of a fused chain live only in this call. With ``remote=True`` a failure
    carries its formatted traceback, for a process that cannot ship the traceback object.
    """
    values: dict[str, Any] = dict(inputs)
    value: Any = None
    for node in unit.tasks:
        try:
            value = _call(node, values)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is the task's
            text = "".join(traceback.format_exception(exc)) if remote else None
            return UnitOutcome(unit, failure=TaskFailure(node.key, node.name, exc, text))
        values[node.key] = value
    return UnitOutcome(unit, value=value)


def _call(node: TaskNode, values: Mapping[str, Any]) -> Any:
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
    """Replace each Ref in ``obj`` (nested in lists, tuples, dicts) by the value it stands for."""

    def value_of(ref: Ref) -> Any:
        value = values[ref.key]
        return value if ref.index is None else value[ref.index]

    return map_nested(obj, Ref, value_of)


def portable_failure(failure: TaskFailure) -> TaskFailure:
    """``failure`` made safe to pickle: an exception that cannot be pickled becomes its text."""
    import pickle

    try:
        pickle.dumps(failure.exception)
    except Exception:  # noqa: BLE001 - whatever makes it unpicklable
        exc = failure.exception
        failure.exception = RuntimeError(
            f"{type(exc).__name__}: {exc} (the exception could not be pickled)"
        )
    return failure


class UnitFailed(Exception):
    """Raised by a unit run inside another scheduler (dask), carrying the task failure, so that
    the scheduler stops its dependents and the caller learns which task failed."""

    def __init__(self, failure: TaskFailure, restart_worker: str | None = None) -> None:
        super().__init__(f"task {failure.name!r} failed: {failure.exception!r}")
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
