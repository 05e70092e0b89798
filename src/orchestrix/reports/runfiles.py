"""What a run leaves in ``out_dir``: the caller's log, ``run.json`` and the profiles' summaries.

Nothing is written without ``out_dir``. The caller's log takes the ``orchestrix`` logger's records
at the levels the application chose, plus the run's own account (start, summary, failures) at
INFO, which is written to the file directly so that orchestrix never changes logging levels.

Several orchestrators may live in one process, all logging to the ``orchestrix`` logger: each
log file takes only the records of its own run, the run active where the record is made (see
:mod:`orchestrix.runcontext`). A record made outside any run (the application's own, a thread of
a library) goes to every open run's log, as it would with one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from collections.abc import Iterator
from typing import Any, TypeVar

from ..errors import OrchestrixError
from ..monitoring.monitor import Monitor
from ..runcontext import activate, active_run

__all__ = ["RUN_DATA_FILE", "RunFiles"]

LOG_FILE = "orchestrix.log"
RUN_DATA_FILE = "run.json"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("orchestrix")
_T = TypeVar("_T")


class RunFiles:
    """The files of one orchestrator's runs (a no-op without ``out_dir``)."""

    def __init__(self, out_dir: str | None) -> None:
        self.out_dir = out_dir
        self.handler: logging.Handler | None = None
        if out_dir is not None:
            _make_out_dir(out_dir)
            self.handler = logging.FileHandler(
                os.path.join(out_dir, LOG_FILE), encoding="utf-8", delay=True
            )
            self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
            self.handler.addFilter(self._is_mine)
            logger.addHandler(self.handler)

    def active(self) -> contextlib.AbstractContextManager[None]:
        """Records made inside the block (in this thread) belong to this run."""
        return activate(self)

    def iterate(self, items: Iterator[_T]) -> Iterator[_T]:
        """``items``, each step made with this run active (a generator runs where it is
        consumed, outside the call that made it)."""
        box: list[_T] = []  # not a local: a suspended generator would keep the item alive
        try:
            while True:
                with self.active():
                    box.extend(itertools.islice(items, 1))
                if not box:
                    return
                yield box.pop()
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                with self.active():
                    close()

    def _is_mine(self, record: logging.LogRecord) -> bool:
        active = active_run()
        return active is None or active is self

    def narrate(self, message: str, *args: Any) -> None:
        """Log at INFO, and write it to the run's log file whatever the logger's level."""
        if logger.isEnabledFor(logging.INFO):
            logger.info(message, *args)  # our handler is one of the logger's: written once
        elif self.handler is not None:
            record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, args, None)
            self.handler.handle(record)

    def finish(self, monitor: Monitor, facts: dict[str, Any]) -> None:
        """At close: log the summary; write run.json and the profiles' summaries; close the log."""
        monitor.close()
        self.narrate("run summary: %s", monitor.summary())
        if self.out_dir is None:
            return
        try:
            write_json(os.path.join(self.out_dir, RUN_DATA_FILE), monitor.run_data(**facts))
            if facts.get("profiling") == "cprofile":
                from .profiles import summarize_cprofile

                path = summarize_cprofile(self.out_dir)
                if path is not None:
                    self.narrate("cProfile summary of the workers: %s", path)
        finally:
            self.close_log()

    def close_log(self) -> None:
        if self.handler is not None:
            logger.removeHandler(self.handler)
            self.handler.close()
            self.handler = None


def _make_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if os.path.isfile(out_dir) else exc.strerror
        raise OrchestrixError(
            f"cannot use out_dir {out_dir!r} as the run's directory: {why}; "
            "give out_dir a directory that can be created and written to"
        ) from exc


def write_json(path: str, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as JSON atomically: a reader never sees half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=indent, sort_keys=True, default=str)
        stream.write("\n")
    os.replace(temporary, path)
