"""The run journal: the state of every task in ``out_dir/journal.sqlite`` (SQLite, WAL mode).

A task goes REGISTERED -> RUNNING (TESTING in a canary run) -> DONE or FAILED. A retry returns it
to REGISTERED; a task running when its run stopped (an error elsewhere, Ctrl-C, close, the caller
killed) becomes KILLED. Resumed runs mark the final tasks whose results they load DONE.

Writes are batched: the journal's thread applies the posted events to an in-memory copy of the
rows that changed and writes them in one transaction every ``BATCH_SECONDS``, so a task that
starts and ends within a batch costs one row write. WAL with ``synchronous=NORMAL`` keeps every
commit atomic: killing the caller (even ``kill -9``) loses at most the last batch, never the file.

A run holds a shared ``flock`` on ``journal.lock`` while it lives; the kernel drops it when the
process dies, which is how ``python -m orchestrix status`` tells a live run from a dead one.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import sys
import time
from typing import Any

from .tracking import Tracker

__all__ = ["JOURNAL_FILE", "STATES", "Journal", "connect", "run_is_alive"]

JOURNAL_FILE = "journal.sqlite"
LOCK_FILE = "journal.lock"
REGISTERED, TESTING, RUNNING, DONE, FAILED, KILLED = STATES = (
    "REGISTERED",
    "TESTING",
    "RUNNING",
    "DONE",
    "FAILED",
    "KILLED",
)
#: the longest a task state waits in memory before it is written
BATCH_SECONDS = 0.25
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, host TEXT, pid INTEGER, started REAL, ended REAL, outcome TEXT,
    resume INTEGER, argv TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY, name TEXT, state TEXT, attempts INTEGER, worker TEXT, started REAL,
    ended REAL, peak_rss_mb REAL, error TEXT, canary INTEGER, resumed INTEGER, run INTEGER)
    WITHOUT ROWID;
"""
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
    "resumed = excluded.resumed, run = excluded.run"
)
# Fields of the in-memory row of a task not yet final (REGISTERED, RUNNING or TESTING).
NAME, STATE, ATTEMPTS, WORKER, STARTED, CANARY = range(6)
_LIVE = (RUNNING, TESTING)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the journal at ``path`` (read-only: never writes, never creates)."""
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)  # explicit transactions
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # commits stay atomic; no fsync per commit
    # Keys are hashes, so rows land at random places in the table: a cache that holds the table
    # (64 MB at most, taken only as it grows) halves the cost of a write.
    connection.execute("PRAGMA cache_size=-65536")
    return connection


def run_is_alive(out_dir: str) -> bool:
    """Whether a live process holds the journal of ``out_dir`` (an orchestrator using it)."""
    try:
        descriptor = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also drops the probe's lock
    return False


class Journal(Tracker):
    """The journal of one orchestrator: opened at start, closed (and its run ended) at close."""

    batch_seconds = BATCH_SECONDS

    def __init__(self, out_dir: str, resume: bool) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, JOURNAL_FILE)
        self._lock_fd = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.run_id = self._open_run(resume)
        except BaseException:
            os.close(self._lock_fd)
            raise
        # Rows not final yet, and which of them changed since the last write.
        self._live: dict[str, list[Any]] = {}
        self._changed: set[str] = set()
        # Rows that became final since the last write, whole (replace) or partial (merge).
        self._final: dict[str, tuple[Any, ...]] = {}
        self._partial: dict[str, tuple[Any, ...]] = {}
        self._connection: sqlite3.Connection | None = None
        self._statements = [
            sql.format(run=self.run_id) for sql in (_REPLACE_FINAL, _MERGE, _REPLACE_LIVE)
        ]
        super().__init__("orchestrix-journal")

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the run is over: status sees it ended
            self._lock_fd = -1

    # -- opening ------------------------------------------------------------------------------

    def _open_run(self, resume: bool) -> int:
        """Create the tables, settle what earlier runs left, and add this run."""
        alone = _try_lock(self._lock_fd, fcntl.LOCK_EX)
        connection = connect(self.path)
        try:
            connection.executescript(SCHEMA)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("BEGIN IMMEDIATE")
            if alone:  # no other live run: what earlier runs left running died with them
                connection.execute(
                    "UPDATE tasks SET state = ? WHERE state IN (?, ?)", (KILLED, *_LIVE)
                )
                connection.execute("UPDATE runs SET outcome = 'killed' WHERE ended IS NULL")
                if not resume:  # a new run starts a new journal; a resumed one continues it
                    connection.execute("DELETE FROM tasks")
            cursor = connection.execute(
                "INSERT INTO runs (host, pid, started, resume, argv) VALUES (?, ?, ?, ?, ?)",
                (socket.gethostname(), os.getpid(), time.time(), int(resume), " ".join(sys.argv)),
            )
            connection.execute("COMMIT")
            assert cursor.lastrowid is not None
            return cursor.lastrowid
        finally:
            connection.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # from exclusive (or none) to shared

    # -- events (the journal's thread) ----------------------------------------------------------
    # The common path (registered, started, recorded within one batch) is kept to a few list
    # and dict operations per task: it runs for every task of every run with out_dir.

    def handle(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            getattr(self, "_on_" + event[0])(*event[1:])
        self._write()

    def finish(self) -> None:
        for key, row in list(self._live.items()):
            if row[STATE] in _LIVE:  # still running as the orchestrator closes: stopped
                self._finalize(key, row, KILLED)
        self._write()
        connection = self._connect()
        connection.execute(
            "UPDATE runs SET ended = ?, outcome = 'closed' WHERE id = ?", (time.time(), self.run_id)
        )
        connection.close()
        self._connection = None

    def _on_registered(self, units: list[Any], canary: bool) -> None:
        live, changed, flag = self._live, self._changed, int(canary)
        for unit in units:
            for node in unit.tasks:
                live[node.key] = [node.name, REGISTERED, 0, None, None, flag]
                changed.add(node.key)

    def _on_started(self, units: list[Any], worker: str, when: float) -> None:
        live, changed = self._live, self._changed
        for unit in units:
            for node in unit.tasks:
                row = live.get(node.key)
                if row is None:  # final already (a rerun of a task kept in an earlier batch)
                    row = live[node.key] = [node.name, REGISTERED, 0, None, None, 0]
                row[STATE] = TESTING if row[CANARY] else RUNNING
                row[ATTEMPTS] += 1
                row[WORKER] = worker
                row[STARTED] = when
                changed.add(node.key)

    def _on_recorded(
        self, worker: str, peak_rss_mb: float | None, entries: list[tuple[Any, ...]]
    ) -> None:
        live, final = self._live, self._final
        for unit, started, walls, ok, _ in entries:
            ran = len(walls)
            for index, node in enumerate(unit.tasks):
                key = node.key
                row = live.pop(key, None)
                if index >= ran:  # after the task that failed: it never ran
                    self._back_to_registered(key, node.name, row)
                    continue
                ended = started + walls[index]
                state = FAILED if not ok and index == ran - 1 else DONE
                if row is None:
                    self._record_unknown(key, node.name, state, worker, started, ended, peak_rss_mb)
                else:
                    final[key] = (key, row[NAME], state, row[ATTEMPTS], worker, started, ended,
                                  peak_rss_mb, None, row[CANARY])  # fmt: skip
                started = ended

    def _on_failed(self, failure: dict[str, Any]) -> None:
        key, error, worker = (
            failure["key"],
            failure["traceback"] or failure["error"],
            failure["worker"],
        )
        row = self._live.pop(key, None)
        if row is not None:
            self._finalize(key, row, FAILED, error=error, worker=worker)
            return
        known = self._final.get(key)
        if known is not None:  # recorded as failed in this batch: add the error
            self._final[key] = (*known[:2], FAILED, known[3], worker or known[4], *known[5:8],
                                error, known[9])  # fmt: skip
            return
        self._partial[key] = (key, failure["name"], FAILED, None, worker, None, None, None, error,
                              0)  # fmt: skip

    def _on_retried(self, unit: Any) -> None:
        for node in unit.tasks:
            row = self._live.get(node.key)
            if row is not None:
                row[STATE] = REGISTERED
                self._changed.add(node.key)

    def _on_stopped(self, units: list[Any]) -> None:
        live = self._live
        for unit in units:
            for node in unit.tasks:
                row = live.get(node.key)
                if row is not None and row[STATE] in _LIVE:
                    del live[node.key]
                    self._finalize(node.key, row, KILLED)

    def _on_loaded(self, tasks: list[tuple[str, str]]) -> None:
        for key, name in tasks:  # keeps the times of the run that computed it
            self._partial[key] = (key, name, DONE, None, None, None, None, None, None, 1)

    def _finalize(
        self, key: str, row: list[Any], state: str, error: str | None = None, worker: Any = None
    ) -> None:
        self._live.pop(key, None)
        worker = worker or row[WORKER]
        self._final[key] = (key, row[NAME], state, row[ATTEMPTS], worker, row[STARTED], None,
                            None, error, row[CANARY])  # fmt: skip

    def _back_to_registered(self, key: str, name: str, row: list[Any] | None) -> None:
        if row is None:
            row = [name, REGISTERED, 0, None, None, 0]
        row[STATE], row[WORKER], row[STARTED] = REGISTERED, None, None
        self._live[key] = row
        self._changed.add(key)

    def _record_unknown(self, key: str, name: str, state: str, *times: Any) -> None:
        """A task this journal holds no row of (killed, then it finished after all)."""
        known = self._final.pop(key, None)
        if known is not None:
            self._final[key] = (key, name, state, known[3], *times, None, known[9])
        else:
            self._partial[key] = (key, name, state, None, *times, None, 0)

    # -- writing ------------------------------------------------------------------------------

    def _write(self) -> None:
        live = self._live
        changed = [
            (key, row[NAME], row[STATE], row[ATTEMPTS], row[WORKER], row[STARTED], row[CANARY])
            for key in self._changed
            if (row := live.get(key)) is not None
        ]
        self._changed.clear()
        if not (changed or self._final or self._partial):
            return
        connection = self._connect()
        connection.execute("BEGIN")
        statements = self._statements
        connection.executemany(statements[0], self._final.values())
        connection.executemany(statements[1], self._partial.values())
        connection.executemany(statements[2], changed)
        connection.execute("COMMIT")
        self._final.clear()
        self._partial.clear()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = connect(self.path)
        return self._connection


def _try_lock(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
