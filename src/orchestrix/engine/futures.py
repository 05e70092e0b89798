"""The futures of ``Orchestrator.submit`` and ``map``, and the thread their callbacks run in.

A backend settles a future from its own thread (the pool's manager, in multiprocessing). Had the
done-callbacks run there, as ``concurrent.futures`` runs them in the thread that sets the result,
one callback that blocks, or that calls ``compute`` (which waits on that same thread), would
freeze dispatch for every caller. So a :class:`CallFuture`'s result is set at once, waking every
``result()`` and ``wait``, and its callbacks are handed to one callbacks thread per orchestrator.
A callback added to a future that is already done runs at once in the caller, as in
``concurrent.futures``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

__all__ = ["CallFuture", "CallbackThread"]

logger = logging.getLogger("orchestrix")

#: how long ``close`` lets queued callbacks finish before it goes on without them
CLOSE_WAIT_SECONDS = 10.0


class CallbackThread:
    """Runs the done-callbacks of futures, in order, in one thread started on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call_soon(self, fn: Callable[[Any], Any], future: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="orchestrix-future-callbacks", daemon=True
                )
                self._thread.start()
        self._queue.put((fn, future))

    def close(self) -> None:
        """Let the queued callbacks run (a bounded time), then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        if thread is threading.current_thread():
            return  # closed from a callback: the thread ends after it
        thread.join(CLOSE_WAIT_SECONDS)
        if thread.is_alive():
            logger.warning(
                "orchestrix: a future's done-callback has not returned after %s s; closing "
                "without waiting for it",
                CLOSE_WAIT_SECONDS,
            )

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            try:
                fn(future)
            except Exception:
                logger.exception("orchestrix: exception calling callback for %r", future)


class CallFuture(Future[Any]):
    """A ``concurrent.futures.Future`` whose done-callbacks never run in the backend's thread.

    It is honest about its call: it is running from the moment a worker has the call
    (:meth:`mark_running`, which the backend calls), and :meth:`cancel` succeeds only for a call
    that the backend could take back, one that will never run."""

    def __init__(self, callbacks: CallbackThread) -> None:
        super().__init__()
        self._callbacks = callbacks
        self.withdraw: Callable[[], bool] | None = None  # takes the call back from the backend

    def mark_running(self) -> bool:
        """A worker has the call: the future is running (if it is already, it stays so).
        False if it was cancelled first (the backend then does not run it)."""
        with self._condition:
            if self._state == RUNNING:
                return True
            if self._state in (CANCELLED_AND_NOTIFIED, FINISHED):
                return False  # withdrawn (see cancel), or failed by a close
            return self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        with self._condition:
            if self._state != PENDING:  # running, done or cancelled already: as it says
                return super().cancel()
        withdraw = self.withdraw
        if withdraw is not None and not withdraw():
            return False  # a worker has the call: it runs, and its outcome will be set
        if not super().cancel():
            return False
        # The call will never run, so nothing else will tell the waiters (``wait``,
        # ``as_completed``) that this future is done: tell them now.
        self.set_running_or_notify_cancel()
        return True

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        adder = threading.get_ident()
        callbacks = self._callbacks

        def hand_over(future: Future[Any]) -> None:
            if threading.get_ident() == adder:
                fn(future)  # done already (or settled by the adder's own thread): call it now
            else:
                callbacks.call_soon(fn, future)

        super().add_done_callback(hand_over)

    def add_internal_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        """A callback of orchestrix's own (quick, never blocking: bookkeeping, a progress bar),
        run in the thread that settles the future, so it has run when ``result()`` returns."""
        super().add_done_callback(fn)
