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

from .events import Tracker

__all__ = ["CallbackTracker", "TaskEvent"]

logger = logging.getLogger("orchestrix")


@dataclass(frozen=True)
class TaskEvent:
    """A task ended: ``state`` is ``"DONE"`` or ``"FAILED"`` (then ``error`` says why)."""

    key: str
    name: str
    state: str
    worker: str | None = None
    started: float | None = None  # epoch seconds
    ended: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None

    @property
    def wall_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


class CallbackTracker(Tracker):
    """Calls ``on_task_done`` with a :class:`TaskEvent` for each task done or failed.

    Failures are reported when the caller learns of them (with the error); tasks that were not
    run because the run stopped get no event."""

    def __init__(self, on_task_done: Callable[[TaskEvent], Any]) -> None:
        self.on_task_done = on_task_done
        self.errors = 0
        super().__init__("orchestrix-callbacks")

    def handle(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            if event[0] == "recorded":
                self._recorded(*event[1:])
            elif event[0] == "failed":
                failure = event[1]
                error = failure["error"]
                self._call(
                    TaskEvent(
                        failure["key"], failure["name"], "FAILED", failure["worker"], error=error
                    )
                )

    def finish(self) -> None:
        if self.errors > 1:
            logger.warning("orchestrix: on_task_done raised %d times in all", self.errors)

    def _recorded(
        self, worker: str, peak_rss_mb: float | None, entries: list[tuple[Any, ...]]
    ) -> None:
        for unit, started, walls, ok, _ in entries:
            done = len(walls) if ok else len(walls) - 1  # a failure is told with its error
            for node, wall in zip(unit.tasks[:done], walls, strict=False):
                ended = started + wall
                self._call(
                    TaskEvent(node.key, node.name, "DONE", worker, started, ended, peak_rss_mb)
                )
                started = ended

    def _call(self, event: TaskEvent) -> None:
        try:
            self.on_task_done(event)
        except Exception:  # a notification must not stop the computation
            self.errors += 1
            if self.errors == 1:
                logger.exception("orchestrix: on_task_done raised for task %r", event.name)
