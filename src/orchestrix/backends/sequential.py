"""The ``sequential`` backend: every unit runs in the caller's thread, when it is handed over.

The engine hands over one unit at a time, in its depth-first order, so runs are deterministic; the
graph is built without running anything (unlike CARS's sequential mode, which ran tasks as they
were declared). It is the oracle that every other backend is tested against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from ..execute import run_unit
from ..factorize import WorkUnit
from .base import Backend, Sink

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._job_ids = itertools.count()

    def start(self) -> None:
        pass  # nothing to acquire

    def submit(self, unit: WorkUnit, inputs: Mapping[str, Any], sink: Sink) -> int:
        sink(run_unit(unit, inputs))
        return next(self._job_ids)

    def cancel(self, job_ids: Iterable[int]) -> None:
        pass  # a job is finished when submit returns

    def close(self) -> None:
        pass
