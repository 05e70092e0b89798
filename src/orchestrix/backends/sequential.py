"""The ``sequential`` backend: every unit runs in the caller's thread, when it is handed over.

The engine hands over one unit at a time, in its depth-first order, so runs are deterministic; the
graph is built without running anything (unlike CARS's sequential mode, which ran tasks as they
were declared). It is the oracle that every other backend is tested against.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..failures import TaskFailure, closed_error
from ..graph.factorize import WorkUnit
from ..graph.shared import running_owner
from ..worker.execute import UnitOutcome
from ..worker.observe import ProcessObserver, UsageMeter, run_measured, worker_name
from .base import Backend, Recorder, Sink, Started, worker_settings

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    def __init__(self, config: Any, monitor: Recorder) -> None:
        super().__init__(config, monitor)
        self._job_ids = itertools.count()
        # Tasks run in the caller's process: its logging is the caller's, so the task log file
        # takes only the records of tasks, and levels are left as the caller set them.
        self._observer = ProcessObserver(worker_settings(config, own_process=False))
        self._caller = self._observer if self._observer.wraps_calls else None
        self._meter = UsageMeter(time.process_time)
        self._name = worker_name()
        self._ctrl_c = _CtrlC()
        self._closed = False

    def start(self) -> None:
        self._observer.start()
        self._ctrl_c.install()

    def submit(
        self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink, started: Started | None = None
    ) -> int:
        if self._closed:  # closed from another thread while a compute runs here: it ends now
            sink(UnitOutcome(unit, failure=closed_error(unit.key, unit.name)))
            return next(self._job_ids)
        if self.monitor.tracks_states:
            self.monitor.note_started([unit], self._name)
        self._ctrl_c.seen = False
        if started is not None:
            started()
        with running_owner(self.shares):  # a handle of another orchestrator is refused
            outcome = run_measured(unit, inputs, self._meter, self._caller)
        failure = outcome.failure
        if isinstance(failure, TaskFailure) and self._ctrl_c.is_real(failure.exception):
            raise failure.exception  # the user's Ctrl-C stops the run, as it should
        self.monitor.record_outcome(outcome, self._name)
        sink(outcome)
        return next(self._job_ids)

    def cancel(self, job_ids: Iterable[int]) -> None:
        pass  # a job is finished when submit returns

    def close(self) -> None:
        self._closed = True
        self.shares.close()
        self._ctrl_c.uninstall()
        self._observer.stop()
        self._meter.close()


class _CtrlC:
    """Tells a real Ctrl-C apart from a KeyboardInterrupt that a task raised itself: the first
    stops the run, the second is the task's failure, as in every other mode.

    While the orchestrator is open, Python's default SIGINT handler is wrapped to note that the
    signal came. Where it cannot be (not the main thread, a handler of the caller's own), a
    KeyboardInterrupt in the main thread is taken for a real one, unless SIGINT is ignored."""

    def __init__(self) -> None:
        self.seen = False
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def uninstall(self) -> None:
        if not self._installed or signal.getsignal(signal.SIGINT) != self._on_sigint:
            return  # never installed, or the caller has set a handler of its own since
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:
            return  # closed from another thread: the handler stays, and does what Python's does
        self._installed = False

    def is_real(self, exc: BaseException) -> bool:
        if not isinstance(exc, KeyboardInterrupt):
            return False
        if self._installed:
            return self.seen
        if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
            return False  # no Ctrl-C can raise it here: the task did
        return threading.current_thread() is threading.main_thread()

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.seen = True
        signal.default_int_handler(signum, frame)
