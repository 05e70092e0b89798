"""Helpers of the durable-run tests (test_journal.py, test_resume.py): backends, the journal's
rows, child processes to kill."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import psutil

import orchestrix as ox
from orchestrix.backends import AVAILABLE
from orchestrix.journal.journal import JOURNAL_FILE
from orchestrix.journal.status import read_status

DURABLE = {
    "sequential": {"mode": "sequential"},
    "multiprocessing": {"mode": "multiprocessing", "nb_workers": 2},
}
if "local_dask" in AVAILABLE:
    DURABLE["local_dask"] = {"mode": "local_dask", "nb_workers": 2}
PARALLEL = [name for name in DURABLE if name != "sequential"]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.join(os.path.dirname(TESTS_DIR), "src")


def rows(out_dir, where="1"):
    connection = sqlite3.connect(os.path.join(out_dir, JOURNAL_FILE))
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute(f"SELECT * FROM tasks WHERE {where}")]
    finally:
        connection.close()


def states(out_dir):
    return {row["key"]: row["state"] for row in rows(out_dir)}


def wait_for(condition, timeout=60.0, what="condition"):
    """Wait for a state of another process or thread (a liveness limit, not a speed test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- helpers -------------------------------------------------------------------------------------


def counts(out_dir, quiet=False):
    try:
        return read_status(out_dir)["counts"]
    except ox.OrchestrixError:
        if quiet:
            return dict.fromkeys(("REGISTERED", "TESTING", "RUNNING", "DONE"), 0)
        raise


def stored(directory):
    try:
        return sum(1 for name in os.listdir(directory) if ".tmp-" not in name)
    except FileNotFoundError:
        return 0


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, SRC_DIR, env.get("PYTHONPATH")]))
    return env


def spawn(arguments):
    return subprocess.Popen([sys.executable, *arguments], env=child_env())


def kill(child, with_descendants=False):
    """SIGKILL the child (as the OOM killer would), and its descendants too if asked; return
    its descendants."""
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    os.kill(child.pid, signal.SIGKILL)
    if with_descendants:
        for process in descendants:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    child.wait()
    return descendants


def assert_same_results(values, expected):
    assert len(values) == len(expected)
    for value, want in zip(values, expected, strict=True):
        if isinstance(want, np.ndarray):
            assert type(value) is np.ndarray and value.dtype == want.dtype
            assert np.array_equal(value, want)
        else:
            assert value == want
