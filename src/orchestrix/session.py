"""What one orchestrator holds while it is open, acquired together and released together.

The session creates the run's record keeper (the :class:`~orchestrix.monitoring.monitor.Monitor`)
and hands it to the backend, the engine and the consumers of task events (the journal, the
user's callbacks): the backend contract knows only the few methods it calls
(:class:`~orchestrix.backends.base.Recorder`). If a step of the acquisition fails (a corrupt
journal, an out_dir that is a file) what the steps before acquired is released; once all
succeed, a ``weakref.finalize`` owns it all, so that cleanup also runs at interpreter exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from .backends import create_backend
from .backends.base import Backend
from .config import Config
from .engine.futures import CallbackThread
from .engine.scheduler import Engine
from .engine.store import RESULTS_DIR, ResultStore
from .journal.journal import Journal
from .monitoring.callbacks import CallbackConsumer, TaskEvent
from .monitoring.events import EventConsumer
from .monitoring.monitor import Monitor, RunSummary
from .reports.runfiles import RunFiles, write_json

__all__ = ["CONFIG_FILE_NAME", "Session"]

CONFIG_FILE_NAME = "used_orchestrator.json"


class Session:
    """The backend, engine, monitor and event consumers of one orchestrator.

    ``close`` (the finalizer) stops the backend, writes the run's files, settles the journal and
    the callbacks, then calls ``on_run_end``; it runs once, from whichever of ``close()``, the
    garbage collector or the interpreter's exit comes first. It never holds the orchestrator."""

    def __init__(
        self,
        owner: object,
        config: Config,
        files: RunFiles,
        callbacks: CallbackThread,
        client: Any = None,
        on_task_done: Callable[[TaskEvent], Any] | None = None,
        on_run_end: Callable[[RunSummary], Any] | None = None,
    ) -> None:
        with contextlib.ExitStack() as undo:
            undo.callback(files.close_log)
            self.monitor = Monitor()
            extras = {"client": client} if client is not None else {}
            self.backend: Backend = create_backend(config, self.monitor, **extras)
            undo.callback(self.backend.close)
            self.engine = Engine(
                self.backend, self.monitor, config.factorize_tasks, config.canary, _store(config)
            )
            if config.out_dir is not None:
                _write_used_config(config)
            consumers = _start_consumers(config, on_task_done, undo)
            for consumer in consumers:
                self.monitor.add_consumer(consumer)
            facts = {
                "mode": config.mode,
                "nb_workers": getattr(config, "nb_workers", None),
                "profiling": config.profiling.mode,
            }
            self.close = weakref.finalize(
                owner, _close, self.backend, self.monitor, callbacks, files, facts, consumers,
                on_run_end,
            )  # fmt: skip
            undo.pop_all()


def describe_config(config: Config) -> str:
    """The configuration in one line, for the run's log."""
    return ", ".join(f"{key}={value!r}" for key, value in config.to_dict().items())


def _store(config: Config) -> ResultStore | None:
    if not config.resume:
        return None
    assert config.out_dir is not None  # the config checked it
    return ResultStore(os.path.join(config.out_dir, RESULTS_DIR))


def _start_consumers(
    config: Config, on_task_done: Callable[[TaskEvent], Any] | None, undo: contextlib.ExitStack
) -> tuple[EventConsumer, ...]:
    """The consumers of task events; each is closed by ``undo`` if construction fails."""
    consumers: list[EventConsumer] = []
    if config.out_dir is not None:
        consumers.append(Journal(config.out_dir, config.resume, keep=config.keep_journal))
        undo.callback(consumers[-1].close)
    if on_task_done is not None:
        consumers.append(CallbackConsumer(on_task_done))
        undo.callback(consumers[-1].close)
    return tuple(consumers)


def _close(
    backend: Backend,
    monitor: Monitor,
    callbacks: CallbackThread,
    files: RunFiles,
    facts: dict[str, Any],
    consumers: tuple[EventConsumer, ...],
    on_run_end: Callable[[RunSummary], Any] | None,
) -> None:
    """Stop the backend (workers write their profiles as they end), then write the run's files,
    settle the journal and the callbacks, and call ``on_run_end``."""
    with files.active():  # from whatever thread (or the exit) the close comes
        try:
            backend.close()
        finally:
            callbacks.close()  # the callbacks of the calls that the close ended run first
            try:
                files.finish(monitor, facts)
            finally:
                for consumer in consumers:
                    consumer.close()
                if on_run_end is not None:
                    try:
                        on_run_end(monitor.summary())
                    except Exception:  # a notification must not break the close
                        logging.getLogger("orchestrix").exception("orchestrix: on_run_end raised")


def _write_used_config(config: Config) -> None:
    assert config.out_dir is not None
    os.makedirs(config.out_dir, exist_ok=True)
    write_json(os.path.join(config.out_dir, CONFIG_FILE_NAME), config.to_dict(), indent=2)
