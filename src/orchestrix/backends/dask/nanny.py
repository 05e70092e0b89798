"""A nanny that starts its worker with spawn, at the cluster's start and at every restart.

A nanny reads ``distributed.worker.multiprocessing-method`` from the global dask configuration
each time it starts a worker process, and a restart (after a crash, a memory kill, our stall
watchdog) happens long after the settings of ``DaskBackend.start`` are gone. In a process whose
dask configuration says forkserver (CARS's does, through ``DASK_CONFIG``), a restarted worker
then came from a forkserver that distributed starts and never stops: it outlived the
orchestrator and the test that checked for leftovers saw it.

The method is set for the duration of each worker start only (other threads see it then: dask
has no thread-local configuration). Nanny starts interleave on the event loop (several workers
start or restart at once), so ``dask.config.set``'s own restore, which records the value it
replaced, could restore ours for good; a count of the starts in progress restores the
application's value when the last one ends. Nothing else of orchestrix sets this key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask.config
from distributed import Nanny

__all__ = ["SpawningNanny"]

_KEY = "multiprocessing-method"  # under distributed.worker
_METHOD = "spawn"  # dask's default; no process of ours outlives the cluster

_starts = 0
_replaced: list[Any] = []  # the application's value while starts are in progress ([] if none)


@contextmanager
def _spawn_method() -> Iterator[None]:
    global _starts
    with dask.config.config_lock:  # the lock of dask.config.set's own changes
        if _starts == 0:
            worker = dask.config.config.setdefault("distributed", {}).setdefault("worker", {})
            _replaced[:] = [worker[_KEY]] if _KEY in worker else []
            worker[_KEY] = _METHOD
        _starts += 1
    try:
        yield
    finally:
        with dask.config.config_lock:
            _starts -= 1
            if _starts == 0:
                worker = dask.config.config["distributed"]["worker"]
                if _replaced:
                    worker[_KEY] = _replaced[0]
                else:
                    worker.pop(_KEY, None)
                _replaced.clear()


class SpawningNanny(Nanny):
    """distributed's Nanny, its worker process always started with spawn."""

    async def instantiate(self) -> Any:
        with _spawn_method():
            return await super().instantiate()
