"""The ``sequential`` backend: every unit runs in the caller's thread, when it is handed over.

The engine hands over one unit at a time, in its depth-first order, so runs are deterministic; the
graph is built without running anything (unlike CARS's sequential mode, which ran tasks as they
were declared). It is the oracle that every other backend is tested against.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..factorize import WorkUnit
from ..observe import ProcessObserver, UsageMeter, run_measured, worker_name
from .base import Backend, Sink, worker_settings

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._job_ids = itertools.count()
        # Tasks run in the caller's process: its logging is the caller's, so the task log file
        # takes only the records of tasks, and levels are left as the caller set them.
        self._observer = ProcessObserver(worker_settings(config, own_process=False))
        self._caller = self._observer if self._observer.wraps_calls else None
        self._meter = UsageMeter(time.process_time)
        self._name = worker_name()

    def start(self) -> None:
        self._observer.start()

    def submit(self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink) -> int:
        if self.monitor.trackers:
            self.monitor.note_started([unit], self._name)
        outcome = run_measured(unit, inputs, self._meter, self._caller)
        self.monitor.record_outcome(outcome, self._name)
        sink(outcome)
        return next(self._job_ids)

    def cancel(self, job_ids: Iterable[int]) -> None:
        pass  # a job is finished when submit returns

    def close(self) -> None:
        self._observer.stop()
        self._meter.close()
