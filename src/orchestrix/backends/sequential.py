"""The ``sequential`` backend: every unit runs in the caller's thread, when the engine waits.

It is lazy (nothing runs until a result is asked for), deterministic (units run in the order the
engine submits them) and the oracle that every other backend is tested against.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..execute import UnitOutcome, run_unit
from ..factorize import WorkUnit
from .base import Backend

__all__ = ["SequentialBackend"]


class SequentialBackend(Backend):
    capacity = 1

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._pending: dict[int, deque[tuple[WorkUnit, Mapping[str, Any]]]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        pass  # nothing to acquire

    def submit(self, run_id: int, unit: WorkUnit, inputs: Mapping[str, Any]) -> None:
        with self._lock:
            self._pending.setdefault(run_id, deque()).append((unit, inputs))

    def wait(self, run_id: int, timeout: float | None = None) -> list[UnitOutcome]:
        with self._lock:
            queue = self._pending.get(run_id)
            if not queue:
                return []
            unit, inputs = queue.popleft()
        return [run_unit(unit, inputs)]

    def cancel(self, run_id: int) -> None:
        with self._lock:
            self._pending.pop(run_id, None)

    def close(self) -> None:
        with self._lock:
            self._pending.clear()
