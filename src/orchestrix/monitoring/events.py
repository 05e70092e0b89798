"""Consumers of a run's task events (the journal, the user's callbacks).

The monitor posts each event to every consumer (:class:`EventConsumer`), from whatever thread
reports it; posting is cheap and the work happens in a thread of the consumer's own, so a slow
disk or a slow callback never holds up the backends. :class:`EventThread` is that for the callbacks
(a queue put per event); the journal flattens events into a buffer instead (see
:mod:`orchestrix.journal.codec`). Each event kind is a record of :mod:`orchestrix.records`, and
consumers dispatch on its type:

- :class:`Registered` ``(units, canary)``: a run will run these units (``canary``: in
  its test run);
- :class:`Started` ``(units, worker, when)``: these units were sent to ``worker``
  (epoch seconds);
- :class:`Recorded` ``(worker, peak_rss_mb, runs)``: units ran (see
  ``Monitor.record_units``), a :class:`UnitRun` each;
- :class:`FailureRecord` ``(key, name, worker, error, traceback, inputs)``: a task failed,
  the caller is told (``inputs``: the failed call in one line);
- :class:`Retried` ``(unit)``: a unit goes back to the queue after its worker died;
- :class:`Stopped` ``(units)``: the run stopped (an error, Ctrl-C, closing) while these
  could run;
- :class:`Loaded` ``(tasks)``: ``(key, name)`` of final tasks whose stored results a
  resumed run loaded.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Protocol

from ..records import Event
from ..runcontext import in_this_run

__all__ = ["EventConsumer", "EventThread"]

logger = logging.getLogger("orchestrix")


class _Close:
    """The end of a consumer's queue (not an event: no consumer sees it)."""


_CLOSE = _Close()
_Queued = Event | _Close


class EventConsumer(Protocol):
    """What the monitor posts events to (a :class:`EventThread`, the journal)."""

    def post(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventThread:
    """Handles posted events in its own thread, in the order they were posted, in batches of
    what arrived meanwhile; the thread sleeps in a queue get while nothing happens."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=in_this_run(self._loop), name=name, daemon=True)
        self._thread.start()

    def post(self, event: Event) -> None:
        """Queue an event (any thread; cheap: it runs for every unit of a run)."""
        self._queue.put(event)

    def close(self) -> None:
        """Handle every event posted so far, then stop the thread. Idempotent."""
        if not self._closing.is_set():
            self._closing.set()
            self._queue.put(_CLOSE)
        self._thread.join()

    # -- for subclasses ----------------------------------------------------------------------

    def handle(self, events: list[Event]) -> None:
        """Handle a batch of events (in the consumer's thread)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once in the consumer's thread after the last batch."""

    # -- the thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            closing = False
            while not closing:
                queued = [self._queue.get()]  # blocks: no wake-ups while nothing happens
                queued += _drain(self._queue)
                events = [event for event in queued if not isinstance(event, _Close)]
                closing = len(events) < len(queued)
                self._handle_safely(events)
        finally:
            try:
                self.finish()
            except Exception:  # a consumer must not break the caller's run
                logger.exception("orchestrix: %s failed while finishing", self._thread.name)

    def _handle_safely(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            self.handle(events)
        except Exception:  # a consumer must not break the caller's run
            logger.exception("orchestrix: %s failed; some task events are lost", self._thread.name)


def _drain(source: queue.SimpleQueue[_Queued]) -> list[_Queued]:
    events = []
    while True:
        try:
            events.append(source.get_nowait())
        except queue.Empty:
            return events
