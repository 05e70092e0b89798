"""The journal's writer: a process of its own that keeps ``journal.sqlite`` up to date.

The caller's journal thread sends it batches of task events (pickled, through a pipe); it applies
them to in-memory rows of the tasks not yet final and writes what changed in one transaction per
batch. Kept out of the caller's process because SQLite's per-row work holds the GIL: in a thread,
it took a fifth of the caller's throughput on the noop benchmark.

Events name tasks by ``(key, name)`` (see :mod:`orchestrix.journal`). At the end of its input it
marks the tasks still running KILLED; without the caller's ``close`` (the caller died) it also
marks the run killed.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sqlite3
import sys
import time
from typing import Any

from ..records import FailureRecord, Loaded
from .codec import (
    Decoded,
    TasksRecorded,
    TasksRegistered,
    TasksRetried,
    TasksStarted,
    TasksStopped,
    decode,
)
from .journal import DONE, FAILED, KILLED, REGISTERED, RUNNING, TESTING, connect

__all__ = ["JournalWriter", "main"]

NICENESS = 19

_COLUMNS = "key, name, state, attempts, worker, started, ended, peak_rss_mb, error, canary"
# Statements of a run (``{run}``: its id, a literal: fewer values to bind per row is faster). A
# row whose every value is known replaces the stored one: a final row, or a live one (no end,
# no peak, no error yet). A partial row (an event about a task that this journal holds no row of)
# only sets what it knows; a loaded result keeps the times of the run that computed it.
_REPLACE_FINAL = (
    f"INSERT OR REPLACE INTO tasks ({_COLUMNS}, resumed, run) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, {run})"
)
_REPLACE_LIVE = (
    "INSERT OR REPLACE INTO tasks (key, name, state, attempts, worker, started, canary, resumed, "
    "run) VALUES (?, ?, ?, ?, ?, ?, ?, 0, {run})"
)
_MERGE = (
    f"INSERT INTO tasks ({_COLUMNS}, resumed, run) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, {run}) "
    "ON CONFLICT (key) DO UPDATE SET state = excluded.state, "
    "attempts = coalesce(excluded.attempts, attempts), worker = coalesce(excluded.worker, worker), "
    "started = coalesce(excluded.started, started), ended = coalesce(excluded.ended, ended), "
    "peak_rss_mb = coalesce(excluded.peak_rss_mb, peak_rss_mb), "
    "error = CASE WHEN excluded.state = 'DONE' THEN NULL ELSE coalesce(excluded.error, error) END, "
    "inputs = CASE WHEN excluded.state = 'DONE' THEN NULL ELSE inputs END, "
    "resumed = excluded.resumed, run = excluded.run"
)
# The failed calls' inputs, set after the rows of a batch are written (only a failure has them,
# so the rows of every other task carry no column more). A row replaced later loses them.
_SET_INPUTS = "UPDATE tasks SET inputs = ? WHERE key = ? AND state = 'FAILED'"
# Fields of the in-memory row of a task not yet final (REGISTERED, RUNNING or TESTING).
NAME, STATE, ATTEMPTS, WORKER, STARTED, CANARY = range(6)
_LIVE = (RUNNING, TESTING)


class JournalWriter:
    """Applies task events to the journal of run ``run_id`` at ``path``."""

    def __init__(self, path: str, run_id: int) -> None:
        self.path = path
        self.run_id = run_id
        # Rows not final yet, and which of them changed since the last write.
        self._live: dict[str, list[Any]] = {}
        self._changed: set[str] = set()
        # Rows that became final since the last write, whole (replace) or partial (merge).
        self._final: dict[str, tuple[Any, ...]] = {}
        self._partial: dict[str, tuple[Any, ...]] = {}
        self._inputs: dict[str, str] = {}  # key -> the inputs of a task failed since then
        self._connection: sqlite3.Connection | None = None
        self._statements = [
            sql.format(run=run_id) for sql in (_REPLACE_FINAL, _MERGE, _REPLACE_LIVE)
        ]
        # The handler of each kind of decoded event (see codec.decode)
        self._handlers: dict[type, Any] = {
            TasksRegistered: self._on_registered,
            TasksStarted: self._on_started,
            TasksRecorded: self._on_recorded,
            FailureRecord: self._on_failed,
            TasksRetried: self._on_retried,
            TasksStopped: self._on_stopped,
            Loaded: self._on_loaded,
        }

    # -- events -------------------------------------------------------------------------------
    # The common path (registered, started, recorded within one batch) is kept to a few list
    # and dict operations per task: it runs for every task of every run with out_dir.

    def handle(self, events: list[Decoded]) -> None:
        handlers = self._handlers
        for event in events:
            handlers[type(event)](event)
        self._write()

    def finish(self, closed: bool) -> None:
        """The end of the input: the tasks still running are stopped; ``closed``: the caller
        closed its orchestrator (else it died, and its run is marked killed)."""
        for key, row in list(self._live.items()):
            if row[STATE] in _LIVE:
                self._finalize(key, row, KILLED)
        self._write()
        connection = self._connect()
        if closed:
            connection.execute(
                "UPDATE runs SET ended = ?, outcome = 'closed' WHERE id = ?",
                (time.time(), self.run_id),
            )
        else:
            connection.execute("UPDATE runs SET outcome = 'killed' WHERE id = ?", (self.run_id,))
        connection.close()
        self._connection = None

    def _on_registered(self, event: TasksRegistered) -> None:
        live, changed, flag = self._live, self._changed, int(event.canary)
        for key, name in event.tasks:
            live[key] = [name, REGISTERED, 0, None, None, flag]
            changed.add(key)

    def _on_started(self, event: TasksStarted) -> None:
        live, changed, worker, when = self._live, self._changed, event.worker, event.when
        for key in event.keys:
            row = live.get(key)
            if row is None:  # final already (a rerun of a task kept in an earlier batch)
                row = live[key] = [_name_of(key), REGISTERED, 0, None, None, 0]
            row[STATE] = TESTING if row[CANARY] else RUNNING
            row[ATTEMPTS] += 1
            row[WORKER] = worker
            row[STARTED] = when
            changed.add(key)

    def _on_recorded(self, event: TasksRecorded) -> None:
        live, final = self._live, self._final
        worker, peak_rss_mb = event.worker, event.peak_rss_mb
        for run in event.runs:
            started, walls, ok = run.started, run.walls, run.ok
            ran = len(walls)
            for index, key in enumerate(run.keys):
                row = live.pop(key, None)
                if index >= ran:  # after the task that failed: it never ran
                    self._back_to_registered(key, row)
                    continue
                ended = started + walls[index]
                state = FAILED if not ok and index == ran - 1 else DONE
                if row is None:
                    self._record_unknown(key, state, worker, started, ended, peak_rss_mb)
                else:
                    final[key] = (key, row[NAME], state, row[ATTEMPTS], worker, started, ended,
                                  peak_rss_mb, None, row[CANARY])  # fmt: skip
                started = ended

    def _on_failed(self, failure: FailureRecord) -> None:
        key, name, worker = failure.key, failure.name, failure.worker
        error = failure.traceback or failure.error
        if failure.inputs:
            self._inputs[key] = failure.inputs
        row = self._live.pop(key, None)
        if row is not None:
            self._finalize(key, row, FAILED, error=error, worker=worker)
            return
        known = self._final.get(key)
        if known is not None:  # recorded as failed in this batch: add the error
            self._final[key] = (*known[:2], FAILED, known[3], worker or known[4], *known[5:8],
                                error, known[9])  # fmt: skip
            return
        self._partial[key] = (key, name, FAILED, None, worker, None, None, None, error, 0)

    def _on_retried(self, event: TasksRetried) -> None:
        for key in event.keys:
            row = self._live.get(key)
            if row is not None:
                row[STATE] = REGISTERED
                self._changed.add(key)

    def _on_stopped(self, event: TasksStopped) -> None:
        live = self._live
        for key in event.keys:
            row = live.get(key)
            if row is not None and row[STATE] in _LIVE:
                self._finalize(key, row, KILLED)

    def _on_loaded(self, event: Loaded) -> None:
        for key, name in event.tasks:  # keeps the times of the run that computed it
            self._partial[key] = (key, name, DONE, None, None, None, None, None, None, 1)

    def _finalize(
        self, key: str, row: list[Any], state: str, error: str | None = None, worker: Any = None
    ) -> None:
        self._live.pop(key, None)
        worker = worker or row[WORKER]
        self._final[key] = (key, row[NAME], state, row[ATTEMPTS], worker, row[STARTED], None,
                            None, error, row[CANARY])  # fmt: skip

    def _back_to_registered(self, key: str, row: list[Any] | None) -> None:
        if row is None:
            row = [_name_of(key), REGISTERED, 0, None, None, 0]
        row[STATE], row[WORKER], row[STARTED] = REGISTERED, None, None
        self._live[key] = row
        self._changed.add(key)

    def _record_unknown(self, key: str, state: str, *times: Any) -> None:
        """A task this journal holds no row of (killed, then it finished after all)."""
        known = self._final.pop(key, None)
        if known is not None:  # a failure told before its unit's record keeps its error
            error = known[8] if state == FAILED else None
            self._final[key] = (key, known[1], state, known[3], *times, error, known[9])
        else:
            self._partial[key] = (key, _name_of(key), state, None, *times, None, 0)

    # -- writing ------------------------------------------------------------------------------

    def _write(self) -> None:
        live = self._live
        changed = [
            (key, row[NAME], row[STATE], row[ATTEMPTS], row[WORKER], row[STARTED], row[CANARY])
            for key in self._changed
            if (row := live.get(key)) is not None
        ]
        self._changed.clear()
        if not (changed or self._final or self._partial or self._inputs):
            return
        connection = self._connect()
        connection.execute("BEGIN")
        statements = self._statements
        connection.executemany(statements[0], self._final.values())
        connection.executemany(statements[1], self._partial.values())
        connection.executemany(statements[2], changed)
        if self._inputs:
            connection.executemany(_SET_INPUTS, [(v, k) for k, v in self._inputs.items()])
        connection.execute("COMMIT")
        self._final.clear()
        self._partial.clear()
        self._inputs.clear()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = connect(self.path)
        return self._connection


def _name_of(key: str) -> str:
    """The task name in a key (``name-token``), for a task the writer was not told the name of."""
    name, _, token = key.rpartition("-")
    return name if name and len(token) == 32 else key


def main() -> None:
    """``python -m orchestrix.journal.writer PATH RUN_ID``: apply the batches read on stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    # The computation comes first: on a busy machine the journal lags (its batches wait in the
    # pipe) rather than take CPU time from the caller and the workers.
    os.nice(NICENESS)
    # Nothing here makes reference cycles (rows are lists of strings and numbers, freed by
    # reference counting), and the collector's passes over the rows held in memory cost as much
    # as decoding the events.
    gc.disable()
    writer = JournalWriter(sys.argv[1], int(sys.argv[2]))
    source = sys.stdin.buffer
    closed = False
    while not closed:
        try:
            batch = pickle.load(source)
        except EOFError:
            break  # the caller died: what it sent is written, the rest is lost
        closed = batch is None
        if not closed:
            writer.handle(decode(batch))
    writer.finish(closed)


if __name__ == "__main__":
    main()
