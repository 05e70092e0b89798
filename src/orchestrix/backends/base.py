"""The contract between the engine and a backend.

The engine owns the graph and decides what is ready and in which order; a backend only runs the
units it is handed and reports what finished. Runs are identified by an integer so that several
runs (a ``compute`` inside a loop over ``as_completed``, or calls from two threads) can share one
backend without receiving each other's results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from ..execute import UnitOutcome
from ..factorize import WorkUnit

__all__ = ["Backend"]


class Backend(ABC):
    """Runs units of work. One module per backend under ``orchestrix.backends``."""

    #: how many units the engine may hand over before it must wait for one to finish
    capacity: int = 1

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def start(self) -> None:
        """Acquire resources (processes, clusters). Called once, before the first submit."""

    @abstractmethod
    def submit(self, run_id: int, unit: WorkUnit, inputs: Mapping[str, Any]) -> None:
        """Start ``unit`` (all of its inputs are given); its outcome comes from ``wait``."""

    @abstractmethod
    def wait(self, run_id: int, timeout: float | None = None) -> list[UnitOutcome]:
        """Block until at least one unit of ``run_id`` finished (or ``timeout``), return them."""

    @abstractmethod
    def cancel(self, run_id: int) -> None:
        """Forget the run: drop its unstarted units and discard outcomes that arrive later."""

    @abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent; also safe if ``start`` was never called."""
