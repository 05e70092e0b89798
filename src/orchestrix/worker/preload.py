"""The ``preload`` modules: imported by every worker before its first task.

CARS's modules take seconds to import; a worker imports them as it starts, so that its first
task does not pay for it, and a module that cannot be imported fails the start with its name
instead of failing every task. A module already imported (by the forkserver the worker was
forked from, see :mod:`orchestrix.backends.pool.warmup`) costs nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

from .. import failures

__all__ = ["import_modules"]


def import_modules(names: Iterable[str]) -> str | None:
    """Import the modules not imported yet, in order: None, or the message naming the first one
    that failed and what it raised."""
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - whatever the module raises as it loads
            return failures.preload_error([name], exc)
    return None
