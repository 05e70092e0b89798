"""Progress bars: tqdm (its notebook widget in Jupyter), fed by the monitor's task records.

A bar counts the tasks of one call (``compute``, ``as_completed``, ``map``): it listens to every
unit the backend finishes and keeps those whose key belongs to its call. It is shown by default
only where someone watches (a terminal or a notebook), so logs and CI output stay clean.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import Any

from .monitor import Monitor

__all__ = ["ProgressBar", "interactive", "shows", "start_progress"]


def interactive() -> bool:
    """Whether a person is likely watching: stderr is a terminal, or this is a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
        if shell is not None and getattr(shell, "kernel", None) is not None:
            return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


class ProgressBar:
    """A tqdm bar: tasks done/total, rate, ETA and failures. Fed by the monitor (units of a
    graph) or by futures (calls of ``map``)."""

    def __init__(self, total: int | None, description: str, unit: str = "task") -> None:
        tqdm = _tqdm_class()
        self.failed = 0
        self.units: dict[str, int] = {}  # unit key -> its number of tasks
        self.monitor: Monitor | None = None
        self.bar: Any = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)

    def listen(self, monitor: Monitor, units: dict[str, int]) -> None:
        self.monitor, self.units = monitor, units
        monitor.add_listener(self.on_unit)

    def on_unit(self, unit_key: str, tasks: int, ok: bool) -> None:
        """A listener of the monitor: may run in a backend's thread."""
        if unit_key in self.units:  # else another call's unit
            self.advance(tasks, ok)

    def on_future(self, items: int, future: Any) -> None:
        self.advance(items, not future.cancelled() and future.exception() is None)

    def advance(self, count: int, ok: bool) -> None:
        self.bar.update(count)
        if not ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.remove_listener(self.on_unit)
        self.bar.close()


def shows(show: bool | None) -> bool:
    """Whether a bar is shown: as asked, or (None) when someone is likely watching."""
    return interactive() if show is None else show


def _tqdm_class() -> Any:
    """tqdm's notebook widget in Jupyter when ipywidgets is there, else its text bar (tqdm.auto
    picks the widget in any kernel, and then fails without ipywidgets)."""
    if "ipykernel" in sys.modules and importlib.util.find_spec("ipywidgets") is None:
        from tqdm import tqdm  # type: ignore[import-untyped]
    else:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    return tqdm


def start_progress(
    show: bool | None, monitor: Monitor, units: Iterable[Any], description: str
) -> ProgressBar | None:
    """A bar over the tasks of ``units`` (objects with ``key`` and ``tasks``) if ``show`` (None:
    if :func:`interactive`), else None."""
    if not shows(show):
        return None
    sizes = {unit.key: len(unit.tasks) for unit in units}
    bar = ProgressBar(sum(sizes.values()), description)
    bar.listen(monitor, sizes)
    return bar
