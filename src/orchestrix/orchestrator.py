"""The ``Orchestrator``: a ``concurrent.futures.Executor`` that also runs task graphs.

It is thin: it validates the configuration, creates the backend of the mode, and hands graphs to
the engine. Cleanup runs at ``close()``, at the end of a ``with`` block, and at interpreter exit
(a ``weakref.finalize``, registered per instance, never at import).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import Any

from .backends import create_backend
from .config import Config, load_config_file, parse_config
from .engine import Engine
from .errors import ConfigError
from .graph import Delayed, TaskFunction, find_delayed, map_nested

__all__ = ["Orchestrator"]

CONFIG_FILE_NAME = "used_orchestrator.json"
_NOT_YET = {"cprofile", "memray"}


class Orchestrator(Executor):
    """Runs task graphs and plain function calls in the configured mode.

    ``Orchestrator(mode="sequential", out_dir="run")``, ``Orchestrator({"mode": ..., ...})`` (a
    CARS-style dict; keywords override it) or ``Orchestrator.from_file("conf.yaml")``.
    """

    def __init__(self, config: Mapping[str, Any] | Config | None = None, /, **options: Any) -> None:
        self.config: Config = parse_config(config, **options)
        _refuse_unbuilt_features(self.config)
        self._backend = create_backend(self.config)
        self._engine = Engine(self._backend, self.config.factorize_tasks)
        self._closed = False
        self._lock = threading.Lock()
        if self.config.out_dir is not None:
            _write_used_config(self.config)
        self._backend.start()
        self._finalizer = weakref.finalize(self, self._backend.close)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> Orchestrator:
        """Build from a JSON or YAML file (or a CARS configuration's ``orchestrator`` section)."""
        return cls(load_config_file(path), **overrides)

    # -- task graphs -------------------------------------------------------------------------

    def compute(self, targets: Any) -> Any:
        """Compute ``targets``: a Delayed gives its value; lists, tuples and dicts holding Delayed
        give the same structure with each Delayed replaced by its value."""
        leaves = find_delayed(targets)
        values: list[Any] = [None] * len(leaves)
        for position, value in self._run(leaves):
            values[position] = value
        return _substitute(targets, iter(values))

    def as_completed(self, targets: Iterable[Delayed]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index in targets, value)`` for each target, in completion order."""
        targets = list(targets)
        for position, target in enumerate(targets):
            if not isinstance(target, Delayed):
                raise TypeError(
                    f"as_completed expects Delayed objects, got {type(target).__name__} at "
                    f"index {position}"
                )
        return self._run(targets)

    # -- concurrent.futures.Executor ---------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a task (arguments may hold Delayed); return a Future."""
        delayed = _as_task(fn)(*args, **kwargs)
        future: Future[Any] = Future()
        self._check_open()
        future.set_running_or_notify_cancel()
        try:
            for _, value in self._run([delayed]):
                future.set_result(value)
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``Executor.map``: ``fn`` over the items, results in input order.

        ``chunksize=n`` hands n items to one task, so a long list of small items (or of files)
        costs n times fewer tasks.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = list(zip(*iterables))  # noqa: B905 - shortest iterable wins, as in Executor.map
        chunk_task = TaskFunction(_call_chunk, name=f"map-{_name_of(fn)}")
        chunks = [chunk_task(fn, calls[i : i + chunksize]) for i in range(0, len(calls), chunksize)]
        return _in_order(self._run(chunks), len(chunks), deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release the backend; the same as :meth:`close`."""
        self.close()

    def close(self) -> None:
        """Stop the backend and release its resources. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Orchestrator mode={self.config.mode!r} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _run(self, targets: list[Delayed]) -> Iterator[tuple[int, Any]]:
        self._check_open()
        return self._engine.run(targets)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new work after the orchestrator was closed")


def _refuse_unbuilt_features(config: Config) -> None:
    profiling = config.profiling
    if profiling.mode in _NOT_YET or profiling.loop_testing:
        raise ConfigError(
            f"key 'profiling' asks for {profiling.mode!r} profiling"
            f"{' with loop_testing' if profiling.loop_testing else ''}, which this version of "
            "orchestrix does not implement yet; use {'mode': 'timing'}"
        )


def _write_used_config(config: Config) -> None:
    assert config.out_dir is not None
    os.makedirs(config.out_dir, exist_ok=True)
    path = os.path.join(config.out_dir, CONFIG_FILE_NAME)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(config.to_dict(), stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(temporary, path)  # atomic: a reader never sees half a file


_TASKS_OF_FUNCTIONS: weakref.WeakKeyDictionary[Any, TaskFunction] = weakref.WeakKeyDictionary()


def _as_task(fn: Callable[..., Any]) -> TaskFunction:
    """The task that wraps ``fn``, made once per function (submit is called in tight loops)."""
    if isinstance(fn, TaskFunction):
        return fn
    try:
        wrapped = _TASKS_OF_FUNCTIONS.get(fn)
    except TypeError:  # not weakly referenceable (builtins): wrap it each time
        return TaskFunction(fn)
    if wrapped is None:
        wrapped = _TASKS_OF_FUNCTIONS[fn] = TaskFunction(fn)
    return wrapped


def _call_chunk(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _in_order(
    results: Iterator[tuple[int, list[Any]]], total: int, deadline: float | None
) -> Iterator[Any]:
    """Yield the items of chunk results in chunk order, holding early chunks until their turn."""
    waiting: dict[int, list[Any]] = {}
    next_chunk = 0
    try:
        while next_chunk < total:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("map: results did not arrive before the timeout")
            position, chunk = next(results)
            waiting[position] = chunk
            while next_chunk in waiting:
                yield from waiting.pop(next_chunk)
                next_chunk += 1
    finally:
        results.close()  # type: ignore[attr-defined]  # stops the run if the caller stops early


def _substitute(structure: Any, values: Iterator[Any]) -> Any:
    """Rebuild ``structure`` with its Delayed leaves replaced, in :func:`find_delayed` order."""
    return map_nested(structure, Delayed, lambda _: next(values))
