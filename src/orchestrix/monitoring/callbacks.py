"""The user's callbacks: ``on_task_done(event)`` for each task that ends, in a thread of their own.

A callback that sends a mail or a chat message may take seconds: it runs in the
``orchestrix-callbacks`` thread, never in a backend's, so it slows nothing but its own queue.
An exception in a callback is logged (the first with its traceback) and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..records import Event, FailureRecord, Recorded, TaskState
from .events import EventThread

__all__ = ["CallbackConsumer", "TaskEvent"]

logger = logging.getLogger("orchestrix")


@dataclass(frozen=True)
class TaskEvent:
    """A task ended: ``state`` is ``TaskState.DONE`` or ``TaskState.FAILED`` (then ``error``
    says why, and ``inputs`` what the task was called on, in one line: ``load(i=3)``); a state
    equals its text, ``"DONE"`` or ``"FAILED"``.

    ``inputs`` is None for a task done: describing every task's arguments would cost each of a
    million tasks its microseconds, and a dask worker reports a task done by its key alone."""

    key: str
    name: str
    state: str
    worker: str | None = None
    started: float | None = None  # epoch seconds
    ended: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    inputs: str | None = None

    @property
    def wall_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class CallbackConsumer(EventThread):
    """Calls ``on_task_done`` with a :class:`TaskEvent` for each task done or failed.

    Failures are reported when the caller learns of them (with the error); tasks that were not
    run because the run stopped get no event."""

    def __init__(self, on_task_done: Callable[[TaskEvent], Any]) -> None:
        self.on_task_done = on_task_done
        self.errors = 0
        super().__init__("orchestrix-callbacks")

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is Recorded:
                self._recorded(event)
            elif type(event) is FailureRecord:
                self._failed(event)

    def finish(self) -> None:
        if self.errors > 1:
            logger.warning("orchestrix: on_task_done raised %d times in all", self.errors)

    def _recorded(self, event: Recorded) -> None:
        worker, peak_rss_mb = event.worker, event.peak_rss_mb
        for run in event.runs:
            walls, started = run.walls, run.started
            done = len(walls) if run.ok else len(walls) - 1  # a failure is told with its error
            for node, wall in zip(run.unit.tasks[:done], walls, strict=False):
                ended = started + wall
                self._call(
                    TaskEvent(
                        node.key, node.name, TaskState.DONE, worker, started, ended, peak_rss_mb
                    )
                )
                started = ended

    def _failed(self, failure: FailureRecord) -> None:
        self._call(
            TaskEvent(
                failure.key,
                failure.name,
                TaskState.FAILED,
                failure.worker,
                error=failure.error,
                inputs=failure.inputs,
            )
        )

    def _call(self, event: TaskEvent) -> None:
        try:
            self.on_task_done(event)
        except Exception:  # a notification must not stop the computation
            self.errors += 1
            if self.errors == 1:
                logger.exception("orchestrix: on_task_done raised for task %r", event.name)
