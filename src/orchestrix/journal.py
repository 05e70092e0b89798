"""The run journal: the state of every task in ``out_dir/journal.sqlite`` (SQLite, WAL mode).

A task goes REGISTERED -> RUNNING (TESTING in a canary run) -> DONE or FAILED. A retry returns it
to REGISTERED; a task running when its run stopped (an error elsewhere, Ctrl-C, close, the caller
killed) becomes KILLED. Resumed runs mark the final tasks whose results they load DONE.

Writes are batched: the journal's thread sends the events posted during ``BATCH_SECONDS`` to the
journal's writer process, which writes the rows that changed in one transaction, so a task that
starts and ends within a batch costs one row write. WAL with ``synchronous=NORMAL`` keeps every
commit atomic: killing the caller (even ``kill -9``) loses at most the last batch, never the file.

A run holds a shared ``flock`` on ``journal.lock`` while it lives; the kernel drops it when the
process dies, which is how ``python -m orchestrix status`` tells a live run from a dead one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
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
logger = logging.getLogger("orchestrix")
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
    """The journal of one orchestrator: opened at start, closed (and its run ended) at close.

    Its thread turns the posted events into plain ``(key, name)`` lists, once per batch, and
    sends them to the writer process (:mod:`orchestrix.journal_writer`). If that process cannot
    start, the thread writes itself."""

    batch_seconds = BATCH_SECONDS

    def __init__(self, out_dir: str, resume: bool) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, JOURNAL_FILE)
        self._lock_fd = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.run_id = self._open_run(resume)
            self._process, self._local = self._start_writer()
        except BaseException:
            os.close(self._lock_fd)
            raise
        super().__init__("orchestrix-journal")

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the run is over: status sees it ended
            self._lock_fd = -1

    def post(self, event: tuple[Any, ...]) -> None:
        # Made plain here, in the thread that posts, rather than in the journal's thread: a second
        # thread busy with Python work makes every GIL release of the posting thread (each system
        # call of a task's measurement) a thread switch, which cost more than the work itself.
        super().post(_COMPACT[event[0]](event))

    def handle(self, events: list[tuple[Any, ...]]) -> None:
        if self._process is None:
            assert self._local is not None
            self._local.handle(events)
            return
        assert self._process.stdin is not None
        pickle.dump(events, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._process.stdin.flush()

    def finish(self) -> None:
        if self._process is None:
            assert self._local is not None
            self._local.finish(closed=True)
            return
        assert self._process.stdin is not None
        try:
            pickle.dump(None, self._process.stdin)  # the close: the run ended normally
            self._process.stdin.close()
        finally:
            if self._process.wait() != 0:
                logger.warning(
                    "orchestrix: the journal writer exited with %s", self._process.returncode
                )

    def _start_writer(self) -> tuple[subprocess.Popen[bytes] | None, Any]:
        command = [sys.executable, "-m", "orchestrix.journal_writer", self.path, str(self.run_id)]
        env = dict(os.environ)  # the writer imports this very orchestrix, installed or not
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        try:
            # Its own session: a Ctrl-C in the terminal is the caller's, the writer finishes.
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, env=env, start_new_session=True
            )
        except OSError as exc:
            from .journal_writer import JournalWriter

            logger.warning("orchestrix: journal written in the caller (no writer process: %s)", exc)
            return None, JournalWriter(self.path, self.run_id)
        return process, None

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


def _try_lock(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _tasks(units: Any) -> list[tuple[str, str]]:
    return [(node.key, node.name) for unit in units for node in unit.tasks]


def _keys(units: Any) -> list[str]:
    """The task keys of units: the names are the writer's already (from registration)."""
    return [key for unit in units for key in _unit_keys(unit)]


def _unit_keys(unit: Any) -> Any:
    tasks = unit.tasks
    return (tasks[0].key,) if len(tasks) == 1 else [node.key for node in tasks]


def _recorded(event: tuple[Any, ...]) -> tuple[Any, ...]:
    entries = [(_unit_keys(unit), started, walls, ok) for unit, started, walls, ok, _ in event[3]]
    return ("recorded", event[1], event[2], entries)


# Each event as the writer takes it: tasks as keys, or (key, name) where the writer may not know
# the name yet; nothing that holds code or data.
_COMPACT: dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {
    "registered": lambda event: ("registered", _tasks(event[1]), event[2]),
    "started": lambda event: ("started", _keys(event[1]), event[2], event[3]),
    "recorded": _recorded,
    "failed": lambda event: event,
    "retried": lambda event: ("retried", _keys([event[1]])),
    "stopped": lambda event: ("stopped", _keys(event[1])),
    "loaded": lambda event: event,
}
