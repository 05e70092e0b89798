"""Which orchestrator's run the current code works for: how each run's log keeps its own records.

Several orchestrators may live in one process, all logging to the ``orchestrix`` logger. A run is
*active* where its code runs: in the caller's thread during a call of its orchestrator
(:func:`activate`), and in every thread that its orchestrator starts (:func:`in_this_run` carries
the run into the thread; before Python 3.14 a thread starts with an empty context).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["activate", "active_run", "in_this_run"]

_ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "orchestrix_active_run", default=None
)


@contextlib.contextmanager
def activate(run: object) -> Iterator[None]:
    """Inside the block (in this thread) ``run`` is the active run."""
    token = _ACTIVE.set(run)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_run() -> object | None:
    """The run active here, or None outside any."""
    return _ACTIVE.get()


def in_this_run(target: Callable[..., Any]) -> Callable[..., Any]:
    """``target``, to run in a new thread with the run that is active here now."""
    return functools.partial(contextvars.copy_context().run, target)
