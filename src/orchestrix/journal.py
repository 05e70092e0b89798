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
    ended REAL, peak_rss_mb REAL, error TEXT, canary INTEGER, resumed INTEGER, run INTEGER);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state);
"""
_COLUMNS = "key, name, state, attempts, worker, started, ended, peak_rss_mb, error, canary, resumed"
# A row whose every value is known replaces the stored one; a partial row (an event about a task
# this journal has not seen since it was last written) only sets what it knows.
_REPLACE = f"INSERT OR REPLACE INTO tasks ({_COLUMNS}, run) VALUES ({', '.join('?' * 12)})"
_MERGE = (
    f"INSERT INTO tasks ({_COLUMNS}, run) VALUES ({', '.join('?' * 12)}) ON CONFLICT (key) DO "
    "UPDATE SET state = excluded.state, attempts = coalesce(excluded.attempts, attempts), "
    "worker = coalesce(excluded.worker, worker), started = coalesce(excluded.started, started), "
    "ended = coalesce(excluded.ended, ended), "
    "peak_rss_mb = coalesce(excluded.peak_rss_mb, peak_rss_mb), "
    "error = CASE WHEN excluded.state = 'DONE' THEN NULL ELSE coalesce(excluded.error, error) END, "
    "resumed = excluded.resumed, run = excluded.run"
)
# Fields of an in-memory row (the columns after the key, then whether every value is known).
NAME, STATE, ATTEMPTS, WORKER, STARTED, ENDED, RSS, ERROR, CANARY, RESUMED, COMPLETE = range(11)
_FINAL = frozenset((DONE, FAILED, KILLED))
_LIVE = (RUNNING, TESTING)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the journal at ``path`` (read-only: never writes, never creates)."""
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)  # explicit transactions
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # commits stay atomic; no fsync per commit
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
        self._rows: dict[str, list[Any]] = {}
        self._dirty: set[str] = set()
        self._connection: sqlite3.Connection | None = None
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

    def handle(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            getattr(self, "_on_" + event[0])(*event[1:])
        self._write()

    def finish(self) -> None:
        for key, row in self._rows.items():
            if row[STATE] in _LIVE:  # still running as the orchestrator closes: stopped
                row[STATE] = KILLED
                self._dirty.add(key)
        self._write()
        connection = self._connect()
        connection.execute(
            "UPDATE runs SET ended = ?, outcome = 'closed' WHERE id = ?", (time.time(), self.run_id)
        )
        connection.close()
        self._connection = None

    def _on_registered(self, units: list[Any], canary: bool) -> None:
        rows, dirty, flag = self._rows, self._dirty, int(canary)
        for unit in units:
            for node in unit.tasks:
                rows[node.key] = [
                    node.name,
                    REGISTERED,
                    0,
                    None,
                    None,
                    None,
                    None,
                    None,
                    flag,
                    0,
                    True,
                ]
                dirty.add(node.key)

    def _on_started(self, units: list[Any], worker: str, when: float) -> None:
        for unit in units:
            for node in unit.tasks:
                row = self._row(node.key, node.name)
                row[STATE] = TESTING if row[CANARY] else RUNNING
                row[ATTEMPTS] = (row[ATTEMPTS] or 0) + 1
                row[WORKER], row[STARTED], row[ENDED] = worker, when, None

    def _on_recorded(
        self, worker: str, peak_rss_mb: float | None, entries: list[tuple[Any, ...]]
    ) -> None:
        for unit, started, walls, ok, _ in entries:
            ran = len(walls)
            for index, node in enumerate(unit.tasks):
                row = self._row(node.key, node.name)
                if index >= ran:  # after the task that failed: it never ran
                    row[STATE] = REGISTERED
                    continue
                ended = started + walls[index]
                failed = not ok and index == ran - 1
                row[STATE] = FAILED if failed else DONE
                row[WORKER], row[STARTED], row[ENDED], row[RSS] = (
                    worker,
                    started,
                    ended,
                    peak_rss_mb,
                )
                started = ended

    def _on_failed(self, failure: dict[str, Any]) -> None:
        row = self._row(failure["key"], failure["name"])
        row[STATE] = FAILED
        row[ERROR] = failure["traceback"] or failure["error"]
        if failure["worker"] is not None:
            row[WORKER] = failure["worker"]

    def _on_retried(self, unit: Any) -> None:
        for node in unit.tasks:
            self._row(node.key, node.name)[STATE] = REGISTERED

    def _on_stopped(self, units: list[Any]) -> None:
        for unit in units:
            for node in unit.tasks:
                row = self._rows.get(node.key)
                if row is not None and row[STATE] in _LIVE:
                    row[STATE] = KILLED
                    self._dirty.add(node.key)

    def _on_loaded(self, tasks: list[tuple[str, str]]) -> None:
        for key, name in tasks:
            row = self._row(key, name)
            row[STATE], row[RESUMED] = DONE, 1

    def _row(self, key: str, name: str) -> list[Any]:
        """The in-memory row of ``key`` (a partial one if not held), marked as changed."""
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [name, None, None, None, None, None, None, None, 0, 0, False]
        self._dirty.add(key)
        return row

    # -- writing ------------------------------------------------------------------------------

    def _write(self) -> None:
        if not self._dirty:
            return
        complete: list[tuple[Any, ...]] = []
        partial: list[tuple[Any, ...]] = []
        run, rows = self.run_id, self._rows
        for key in self._dirty:
            row = rows[key]
            values = (key, *row[:COMPLETE], run)
            (complete if row[COMPLETE] else partial).append(values)
            if row[STATE] in _FINAL:
                del rows[key]  # nothing more to learn: keep only live rows in memory
        self._dirty.clear()
        connection = self._connect()
        connection.execute("BEGIN")
        connection.executemany(_REPLACE, complete)
        connection.executemany(_MERGE, partial)
        connection.execute("COMMIT")

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
