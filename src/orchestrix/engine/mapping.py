"""``Orchestrator.map``: calls read lazily, sent in batches, results in input order.

A task costs the caller tens of microseconds (a node, a job, a future, a record), far more than a
tiny call; and reading every item up front (``list(zip(*iterables))``) and making a future per call
costs memory in proportion to the items: a 10,000,000-item map held them all. So the items are read
as results are taken, a bounded window of batches is in flight, and each batch is one task.

Without a ``chunksize``, batches grow from one call to as many as take about ``TARGET_BATCH_S``,
from the mean call time the workers measured (joblib's automatic batching does the same). A batch
whose call raises returns the results before it, so the caller still gets every result up to the
failing item, and then an error that names that item.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import pickle
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from .. import failures
from ..errors import TaskError
from ..failures import Failure, TaskFailure, portable_exception
from ..graph.inputs import describe_call, describe_node
from ..graph.tasks import TaskNode, function_name

__all__ = [
    "BatchSizer",
    "ItemFailed",
    "OrderedMap",
    "call_batch",
    "failed_call",
    "tasks_in_flight",
]

#: the work an automatic batch aims at: long enough that a task's cost (~50 us in the caller)
#: is under 1% of it, short enough that the sizes follow the calls and the last batches balance
TARGET_BATCH_S = 0.05
#: the most calls in an automatic batch (its arguments and results travel in one message):
#: beyond ~10,000 tiny calls a batch's task cost is already under 0.01 us a call
MAX_BATCH = 10_000
#: the most bytes of arguments and results an automatic batch aims at (estimated from one call)
MAX_BATCH_BYTES = 4 * 2**20

Call = tuple[Any, ...]


class BatchSizer:
    """How many calls the next batch holds: ``fixed`` (an explicit chunksize), or grown from the
    measured call times. Growth is at most a doubling per measured batch, so that a few fast first
    calls cannot make one huge batch of slow ones; shrinking is immediate."""

    def __init__(
        self, fixed: int | None = None, target_s: float = TARGET_BATCH_S, most: int = MAX_BATCH
    ) -> None:
        self.fixed = fixed is not None
        self.size = fixed if fixed is not None else 1
        self.target_s = target_s
        self.most = most
        self.per_call_s: float | None = None

    def observe(self, calls: int, seconds: float, bytes_per_call: int = 0) -> None:
        """A batch of ``calls`` calls took ``seconds`` of work in its worker; one of its calls
        and its result pickle to ``bytes_per_call``."""
        if self.fixed or calls <= 0:
            return
        per_call = seconds / calls
        # Half the weight on the newest batch: the estimate follows calls whose time drifts.
        self.per_call_s = per_call if self.per_call_s is None else (self.per_call_s + per_call) / 2
        ideal = int(self.target_s / max(self.per_call_s, 1e-9))
        if bytes_per_call:  # big items: a batch's message stays a few MB
            ideal = min(ideal, MAX_BATCH_BYTES // bytes_per_call)
        self.size = max(1, min(ideal, 2 * self.size, self.most))


class ItemFailed(Exception):
    """A call of a batch raised: ``index`` in the batch, the ``results`` of the calls before it,
    the ``exception`` and its formatted traceback (the exception's own traceback does not
    survive pickling)."""

    def __init__(
        self, index: int, results: list[Any], exception: BaseException, traceback_text: str
    ) -> None:
        super().__init__(f"call {index} of the batch raised {type(exception).__name__}")
        self.index = index
        self.results = results
        self.exception = exception
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        exception = portable_exception(self.exception)
        return (ItemFailed, (self.index, self.results, exception, self.traceback_text))


def call_batch(fn: Callable[..., Any], calls: list[Call]) -> tuple[list[Any], float]:
    """The task of a batch: every call's result, and the seconds the calls took."""
    results: list[Any] = []
    append = results.append
    begin = time.perf_counter()
    for index, args in enumerate(calls):
        try:
            append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - the item's failure (SystemExit too)
            text = "".join(traceback.format_exception(exc))
            raise ItemFailed(index, results, exc, text) from None
    return results, time.perf_counter() - begin


def _batch_inputs(fn: Callable[..., Any], calls: list[Call]) -> str:
    """A batch in one line: its first and last calls and their number (see graph.inputs)."""
    name = function_name(fn)
    first = describe_call(fn, name, calls[0]) if calls else f"{name}()"
    if len(calls) < 2:
        return first
    return f"{first} ... {describe_call(fn, name, calls[-1])} ({len(calls):,} calls)"


call_batch.__orchestrix_inputs__ = _batch_inputs  # type: ignore[attr-defined]


def failed_call(node: TaskNode, failure: Failure) -> str:
    """The failed call of ``node`` in one line: a batch's item that raised, or the call itself
    (a batch whose worker died: its first and last items)."""
    if node.func is call_batch and isinstance(failure, TaskFailure):
        failed = failure.exception
        if isinstance(failed, ItemFailed):
            fn, calls = node.args
            return describe_call(fn, function_name(fn), calls[failed.index])
    return describe_node(node)


class OrderedMap:
    """One ``map`` call: submits batches while fewer than ``window`` are in flight, yields their
    results in input order, refilling the window as each batch is taken.

    ``submit(calls)`` returns the future of a batch task (of :func:`call_batch`), or with
    ``plain=True`` the future of the single call ``calls[0]``. ``cancel(futures)`` drops
    unfinished ones when the caller stops early. ``on_batch(future, calls)`` sees every batch
    submitted (the progress bar counts its items). ``name`` is the function's, for errors;
    ``describe(call)`` tells a failed call's inputs in one line.
    """

    def __init__(
        self,
        submit: Callable[[list[Call]], Future[Any]],
        cancel: Callable[[list[Future[Any]]], None],
        calls: Iterator[Call],
        sizer: BatchSizer,
        window: int,
        *,
        plain: bool = False,
        deadline: float | None = None,
        name: str = "",
        on_batch: Callable[[Future[Any], int], None] | None = None,
        describe: Callable[[Call], str] | None = None,
    ) -> None:
        self._submit, self._cancel, self._calls = submit, cancel, calls
        self._sizer, self._window, self._plain = sizer, window, plain
        self._deadline, self._name, self._on_batch = deadline, name, on_batch
        self._describe = describe
        #: future, first item, number of calls, the batch's calls (the first sizes the next
        #: ones; a failed one is named). The task of the batch holds the same list meanwhile.
        self._jobs: deque[tuple[Future[Any], int, int, list[Call]]] = deque()
        self._read = 0  # items read from the iterables so far
        self._exhausted = False
        self._fill()  # the first batches start now, as Executor.map's calls do

    def _fill(self) -> None:
        while not self._exhausted and len(self._jobs) < self._window:
            batch = list(itertools.islice(self._calls, self._sizer.size))
            if not batch:
                self._exhausted = True
                return
            future = self._submit(batch)
            if self._on_batch is not None:
                self._on_batch(future, len(batch))
            self._jobs.append((future, self._read, len(batch), batch))
            self._read += len(batch)

    def results(self, done: Callable[[], None] | None = None) -> Iterator[Any]:
        """The results in input order; ``done()`` is called at the end, however it ends."""
        try:
            while self._jobs:
                future, first, count, batch = self._jobs.popleft()
                results, seconds, error = self._take(future, first, batch)
                del future  # it holds the results: the caller's must be the last reference
                if seconds is not None and not self._sizer.fixed:
                    self._sizer.observe(count, seconds, _pickled_size(batch[0], results[0]))
                del batch
                if error is None:
                    self._fill()  # before yielding: the workers go on while the caller reads
                results.reverse()
                while results:  # a result handed over is no longer held here
                    yield results.pop()
                if error is not None:
                    raise error
        finally:
            unfinished = [job[0] for job in self._jobs if not job[0].done()]
            self._jobs.clear()
            if unfinished:
                self._cancel(unfinished)  # the caller stopped early: drop the rest
            if done is not None:
                done()

    def _take(
        self, future: Future[Any], first: int, batch: list[Call]
    ) -> tuple[list[Any], float | None, TaskError | None]:
        """A batch's results, the seconds its calls took, and the error of its failed call."""
        remaining = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            value = future.result(remaining)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("map: a result did not arrive before the timeout") from None
        except TaskError as error:
            failed = error.__cause__
            if not isinstance(failed, ItemFailed):
                raise self._batch_error(error, first, len(batch)) from error.__cause__
            return failed.results, None, self._item_error(error, failed, first, batch)
        if self._plain:
            return [value], None, None
        results, seconds = value
        return results, seconds, None

    def _batch_error(self, error: TaskError, first: int, count: int) -> TaskError:
        """A whole batch failed: see :func:`failures.map_batch_error` (a plain map's error is
        already its call's)."""
        if self._plain:
            return error
        return failures.map_batch_error(error, self._name, first, count)

    def _item_error(
        self, error: TaskError, failed: ItemFailed, first: int, batch: list[Call]
    ) -> TaskError:
        item, index = first + failed.index, failed.index
        inputs = self._describe(batch[index]) if self._describe is not None else None
        return failures.map_item_error(
            error, self._name, item, index, failed.exception, failed.traceback_text, inputs
        )


def _pickled_size(call: Call, result: Any) -> int:
    """Bytes of one call and its result on the wire (0 when they do not pickle: sequential)."""
    try:
        return len(pickle.dumps((call, result), protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - whatever fails to pickle, it is only an estimate
        return 0


#: ``map`` tasks in flight: with ``chunksize=1`` (at least the backend's capacity) and with
#: automatic batches (at least, and 4 per worker)
EXPLICIT_WINDOW = 1024
AUTO_WINDOW = 8


def tasks_in_flight(chunksize: int | None, capacity: int, nb_workers: int) -> int:
    """How many ``map`` tasks are kept in flight, for ``chunksize`` (None: automatic batches)."""
    if chunksize == 1:
        return max(capacity, EXPLICIT_WINDOW)
    if chunksize is None:  # batches of ~50 ms: a few per worker keep them all busy
        return max(AUTO_WINDOW, 4 * nb_workers)
    return max(capacity, EXPLICIT_WINDOW // chunksize, AUTO_WINDOW)
