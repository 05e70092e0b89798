"""The run journal: the state of every task in ``out_dir/journal.sqlite`` (SQLite, WAL mode).

A task goes REGISTERED -> RUNNING (TESTING in a canary run) -> DONE or FAILED. A retry returns it
to REGISTERED; a task running when its run stopped (an error elsewhere, Ctrl-C, close, the caller
killed) becomes KILLED. Resumed runs mark the final tasks whose results they load DONE.

Writes are batched: the journal's thread sends the events posted during ``BATCH_SECONDS`` to the
journal's writer process, which writes the rows that changed in one transaction, so a task that
starts and ends within a batch costs one row write. WAL with ``synchronous=NORMAL`` keeps every
commit atomic: killing the caller (even ``kill -9``) loses at most the last batch, never the file.

Closing waits ``CLOSE_SECONDS`` at most for the writer: one that stopped reading (stopped,
swapped out, on a hung file system) would otherwise hold the caller's ``close`` for ever. Then
the journal says it lags, how many events it did not hand over, and kills the writer.

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
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import OrchestrixError
from ..records import Event, TaskState
from ..runcontext import in_this_run
from .codec import ENCODERS, decode

__all__ = [
    "JOURNAL_FILE",
    "STATES",
    "Journal",
    "connect",
    "run_is_alive",
    "task_columns",
    "unusable_journal",
]

JOURNAL_FILE = "journal.sqlite"
LOCK_FILE = "journal.lock"
#: every state, in the order a task goes through them (see :class:`TaskState`)
STATES = tuple(TaskState)
REGISTERED, TESTING, RUNNING, DONE, FAILED, KILLED = STATES
#: the longest a task state waits in memory before it is written
BATCH_SECONDS = 0.25
#: the longest ``close`` waits for the writer to take the last events and end
CLOSE_SECONDS = 5.0
logger = logging.getLogger("orchestrix")
#: 2: tasks.inputs (a journal of version 1 gains the column when a run opens it)
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, host TEXT, pid INTEGER, started REAL, ended REAL, outcome TEXT,
    resume INTEGER, argv TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    key TEXT PRIMARY KEY, name TEXT, state TEXT, attempts INTEGER, worker TEXT, started REAL,
    ended REAL, peak_rss_mb REAL, error TEXT, canary INTEGER, resumed INTEGER, run INTEGER,
    inputs TEXT)
    WITHOUT ROWID;
"""
_LIVE = (RUNNING, TESTING)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the journal at ``path`` (read-only: never writes, never creates)."""
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)  # explicit transactions
    try:
        connection.execute("PRAGMA journal_mode=WAL")  # the first read: a damaged file fails here
        connection.execute("PRAGMA synchronous=NORMAL")  # commits stay atomic; no fsync per commit
        # Keys are hashes, so rows land at random places in the table: a cache that holds the
        # table (64 MB at most, taken only as it grows) halves the cost of a write.
        connection.execute("PRAGMA cache_size=-65536")
    except BaseException:
        connection.close()  # its file descriptor too
        raise
    return connection


def unusable_journal(path: str, exc: sqlite3.Error) -> OrchestrixError:
    """The error for a journal file that SQLite cannot use (damaged, or not a journal)."""
    return OrchestrixError(
        f"cannot use the run journal {path}: {type(exc).__name__}: {exc}. If it is damaged or "
        "not a journal, move it away (or delete it) and a new one is started; results kept for "
        "resume=True are in out_dir/results, apart from it, and are not lost"
    )


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


class Journal:
    """The journal of one orchestrator: opened at start, closed (and its run ended) at close.

    :meth:`post` (any thread, for every unit) appends the event, flattened, to a buffer; the
    journal's thread sends the buffer to the writer process (:mod:`orchestrix.journal.writer`)
    every ``BATCH_SECONDS`` while events come, and sleeps while none do. If the writer process
    cannot start, the thread writes itself."""

    def __init__(self, out_dir: str, resume: bool, keep: bool = False) -> None:
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, JOURNAL_FILE)
        self._lock_fd = os.open(os.path.join(out_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.run_id = self._open_run(resume, keep)
            self._process, self._local = self._start_writer()
        except sqlite3.Error as exc:
            os.close(self._lock_fd)
            raise unusable_journal(self.path, exc) from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._buffer: list[Any] = []
        # Events posted, taken into a batch and handed to the writer: a lagging journal says
        # how many it did not hand over.
        self._posted = self._taken = self._sent = 0
        self._broken = False
        self._abandoned = False  # close stopped waiting for the writer
        self._woken = False
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set: the buffer has events
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=in_this_run(self._send_batches), name="orchestrix-journal"
        )
        self._thread.daemon = True
        self._thread.start()

    def post(self, event: Event) -> None:
        """Record an event (see :mod:`orchestrix.monitoring.events`); cheap, from any thread."""
        if self._broken:
            return
        with self._lock:
            ENCODERS[type(event)](self._buffer.append, event)
            self._posted += 1
        if not self._woken:  # a plain flag: Event.is_set is a Python call, this runs per unit
            self._woken = True
            self._wake.set()

    def close(self) -> None:
        """Send what is left, end the run in the journal, wait for the writer (``CLOSE_SECONDS``
        at most, then stop it). Idempotent."""
        if not self._closing.is_set():
            self._closing.set()
            self._wake.set()
        self._thread.join(CLOSE_SECONDS)
        if self._thread.is_alive():
            self._abandon()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # the run is over: status sees it ended
            self._lock_fd = -1

    def _abandon(self) -> None:
        """The writer stopped taking events: say what the journal misses, and kill the writer
        (which also frees the journal's thread from its write to the writer's pipe)."""
        self._abandoned = True
        with self._lock:
            posted, missing = self._posted, self._posted - self._sent
        who = f"its writer (pid {self._process.pid})" if self._process else "its thread"
        logger.warning(
            "orchestrix: the journal lags: %s did not finish within %s s and is stopped; %d of "
            "this run's %d task events were never handed to it, and those handed over may not "
            "all be written: %s may show tasks as still running",
            who, CLOSE_SECONDS, missing, posted, self.path,
        )  # fmt: skip
        if self._process is not None:
            self._process.kill()  # a stopped process dies too
            self._thread.join(CLOSE_SECONDS)
            if self._process.poll() is None:
                self._process.wait(CLOSE_SECONDS)

    # -- the journal's thread -------------------------------------------------------------------

    def _send_batches(self) -> None:
        try:
            while not self._closing.is_set():
                self._wake.wait()
                self._closing.wait(BATCH_SECONDS)  # gather a batch (ends at once on close)
                self._send(self._take())
            self._send(self._take())
        except Exception:  # a journal must not break the caller's run
            self._broken = True  # nor keep what it can no longer write
            self._buffer = []
            if not self._abandoned:  # else close said why already
                logger.exception(
                    "orchestrix: the journal failed; task states are no longer written"
                )
        finally:
            self._finish()

    def _take(self) -> list[Any]:
        with self._lock:
            batch, self._buffer = self._buffer, []
            self._taken = self._posted
            self._woken = False  # under the lock: an event posted after this wakes us again
            self._wake.clear()
        return batch

    def _send(self, batch: list[Any]) -> None:
        if not batch:
            return
        if self._process is None:
            self._local.handle(decode(batch))
        else:
            assert self._process.stdin is not None
            pickle.dump(batch, self._process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._process.stdin.flush()
        with self._lock:
            self._sent = self._taken  # every event taken so far is in the writer's pipe

    def _finish(self) -> None:
        if self._process is None:
            self._local.finish(closed=True)
            return
        assert self._process.stdin is not None
        try:
            pickle.dump(None, self._process.stdin)  # the close: the run ended normally
            self._process.stdin.close()
        except OSError as exc:  # the writer died
            if not self._abandoned:
                logger.warning("orchestrix: could not end the journal: %s", exc)
        if self._process.wait() != 0 and not self._abandoned:
            logger.warning(
                "orchestrix: the journal writer exited with %s", self._process.returncode
            )

    def _start_writer(self) -> tuple[subprocess.Popen[bytes] | None, Any]:
        from . import writer as journal_writer

        command = [sys.executable, "-m", journal_writer.__name__, self.path, str(self.run_id)]
        env = dict(os.environ)  # the writer imports this very orchestrix, installed or not
        # the directory holding the top package: as many levels up as this module's name is deep
        package_parent = os.fspath(Path(os.path.abspath(__file__)).parents[__name__.count(".")])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        try:
            # Its own session: a Ctrl-C in the terminal is the caller's, the writer finishes.
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, env=env, start_new_session=True
            )
        except OSError as exc:
            from .writer import JournalWriter

            logger.warning("orchestrix: journal written in the caller (no writer process: %s)", exc)
            return None, JournalWriter(self.path, self.run_id)
        return process, None

    # -- opening ------------------------------------------------------------------------------

    def _open_run(self, resume: bool, keep: bool) -> int:
        """Create the tables, settle what earlier runs left, and add this run (``keep``: the
        tasks of earlier runs stay, as in a resumed run)."""
        alone = _try_lock(self._lock_fd, fcntl.LOCK_EX)
        connection = connect(self.path)
        try:
            connection.executescript(SCHEMA)
            _add_inputs_column(connection)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("BEGIN IMMEDIATE")
            if alone:  # no other live run: what earlier runs left running died with them
                connection.execute(
                    "UPDATE tasks SET state = ? WHERE state IN (?, ?)", (KILLED, *_LIVE)
                )
                connection.execute("UPDATE runs SET outcome = 'killed' WHERE ended IS NULL")
                if not (resume or keep):  # a new run starts a new journal; a resumed one
                    # (or one of several orchestrators of a pipeline) continues it
                    connection.execute("DELETE FROM tasks")
            argv = " ".join(sys.argv)
            cursor = connection.execute(
                "INSERT INTO runs (host, pid, started, resume, argv) VALUES (?, ?, ?, ?, ?)",
                (socket.gethostname(), os.getpid(), time.time(), _continues(resume, keep), argv),
            )
            connection.execute("COMMIT")
            assert cursor.lastrowid is not None
            return cursor.lastrowid
        finally:
            connection.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # from exclusive (or none) to shared


def _continues(resume: bool, keep: bool) -> int:
    """``runs.resume``: 0 the run started a new journal, 1 it resumed, 2 it kept the tasks of the
    runs before it (one of a pipeline's orchestrators)."""
    return 1 if resume else 2 if keep else 0


def task_columns(connection: sqlite3.Connection) -> set[str]:
    """The columns of the journal's tasks table (an older journal has fewer)."""
    return {row[1] for row in connection.execute("PRAGMA table_info(tasks)")}


def _add_inputs_column(connection: sqlite3.Connection) -> None:
    """Give a journal of version 1 the column of the failed calls' inputs."""
    if "inputs" in task_columns(connection):
        return
    try:
        connection.execute("ALTER TABLE tasks ADD COLUMN inputs TEXT")
    except sqlite3.OperationalError:  # another run opening it at the same time added it
        if "inputs" not in task_columns(connection):
            raise


def _try_lock(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
