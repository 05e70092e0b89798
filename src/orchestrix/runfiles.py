"""What a run leaves in ``out_dir``: the caller's log, ``run.json`` and the profiles' summaries.

Nothing is written without ``out_dir``. The caller's log takes the ``orchestrix`` logger's records
at the levels the application chose, plus the run's own account (start, summary, failures) at
INFO, which is written to the file directly so that orchestrix never changes logging levels.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .monitor import Monitor

__all__ = ["RUN_DATA_FILE", "RunFiles"]

LOG_FILE = "orchestrix.log"
RUN_DATA_FILE = "run.json"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("orchestrix")


class RunFiles:
    """The files of one orchestrator's runs (a no-op without ``out_dir``)."""

    def __init__(self, out_dir: str | None) -> None:
        self.out_dir = out_dir
        self.handler: logging.Handler | None = None
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            self.handler = logging.FileHandler(
                os.path.join(out_dir, LOG_FILE), encoding="utf-8", delay=True
            )
            self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logger.addHandler(self.handler)

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


def write_json(path: str, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as JSON atomically: a reader never sees half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=indent, sort_keys=True, default=str)
        stream.write("\n")
    os.replace(temporary, path)
