"""Task functions used by the tests, importable by worker processes (not defined in tests)."""

from __future__ import annotations

import numpy as np

import orchestrix as ox


@ox.task
def ident(x):
    return x


@ox.task
def inc(x):
    return x + 1


@ox.task
def add(a, b):
    return a + b


@ox.task
def total(*values, start=0):
    return start + sum(values)


@ox.task(nout=2)
def divmod_task(a, b):
    return divmod(a, b)


@ox.task(nout=3)
def three(x):
    return x, x * 2, x * 3


@ox.task
def describe(data):
    """Returns the structure of ``data`` with leaves replaced by their repr: checks nesting."""
    return _shape_of(data)


def _shape_of(data):
    if isinstance(data, dict):
        return {k: _shape_of(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(_shape_of(v) for v in data)
    return data


@ox.task
def fail(message="boom"):
    raise ValueError(message)


@ox.task(nout=2)
def wrong_nout(x):
    return x


@ox.task
def make_array(n_bytes, fill):
    return np.full(n_bytes // 8, fill, dtype=np.float64)


@ox.task
def scale(array, factor):
    return array * factor


@ox.task
def checksum(array):
    return float(array.sum())


def square(x):
    return x * x


def raise_on(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


@ox.task
def record(path, value):
    """Appends ``value`` to the file at ``path``: counts executions across processes."""
    _append(path, value)
    return value


@ox.task(pure=False)
def record_impure(path, value):
    _append(path, value)
    return value


def recorded(path):
    try:
        with open(path) as stream:
            return stream.read().split()
    except FileNotFoundError:
        return []


@ox.task
def record_then_sleep(path, seconds, value):
    """Appends ``value`` to ``path`` (the task has started), then sleeps."""
    import time

    _append(path, value)
    time.sleep(seconds)
    return value


def wait_for_records(path, count=1, timeout=60.0):
    """Waits until ``path`` holds ``count`` records (tasks started somewhere); False if never."""
    import time

    deadline = time.monotonic() + timeout
    while len(recorded(path)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def compute_in_thread(orch, path, seconds, count=4):
    """Starts ``orch.compute`` of ``count`` tasks that record themselves in ``path`` and sleep,
    in a thread, and waits for one to start (a close before the compute began would refuse it at
    once: another case). Returns the thread and the list that receives what the compute raised.
    """
    import threading

    errors = []

    def compute():
        try:
            orch.compute([record_then_sleep(path, seconds, i) for i in range(count)])
        except BaseException as exc:  # noqa: BLE001 - what the waiting call got
            errors.append(exc)

    thread = threading.Thread(target=compute)
    thread.start()
    assert wait_for_records(path, timeout=60), "no task of the compute started"
    return thread, errors


@ox.task
def sleep_for(seconds, value=None):
    import time

    time.sleep(seconds)
    return value


@ox.task
def exit_with(code, log=None):
    import os

    if log:
        _append(log, "x")
    os._exit(code)


@ox.task
def kill_self(signal_number, log=None):
    import os

    if log:
        _append(log, "x")
    os.kill(os.getpid(), signal_number)


@ox.task
def segfault():
    import ctypes

    ctypes.string_at(0)


@ox.task
def crash_once(marker, value):
    """Dies the first time (no marker file yet), succeeds when retried."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value


@ox.task
def allocate(megabytes, log=None):
    import time

    if log:
        _append(log, "x")
    block = np.ones(megabytes * 2**20 // 8)
    time.sleep(2)
    return float(block[0])


def worker_pid(_=None):
    import os

    return os.getpid()


def return_lock():
    import threading

    return threading.Lock()


@ox.task
def record_slowly(path, value, seconds=0.01):
    """Like ``record``, taking ``seconds``: long enough that its result is reported at once."""
    import time

    time.sleep(seconds)
    _append(path, value)
    return value


@ox.task
def kill_worker_once(marker, value):
    """SIGKILLs its own worker process the first time (no marker yet); returns value after."""
    import os
    import signal

    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


@ox.task
def wait_file(path):
    """Runs until ``path`` exists: a task that a test releases when it has seen it run."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return 0


def _append(path, value):
    """One line per call, so that tests can count executions across processes."""
    with open(path, "a") as stream:
        stream.write(f"{value}\n")


# -- observing runs (logs, timing, profiling) ---------------------------------------------------

_kept: list[bytes] = []


@ox.task
def chatty(i):
    """Logs one line (with its logger) and warns once per call."""
    import logging
    import warnings

    logging.getLogger("tests.chatty").warning("chatty task %d says hello", i)
    warnings.warn(f"chatty task {i} warns", UserWarning, stacklevel=1)
    return i


@ox.task
def nap(seconds, tag=None):
    import time

    time.sleep(seconds)
    return tag


@ox.task
def spin(seconds):
    """Busy for ``seconds`` of CPU time."""
    import time

    end = time.thread_time() + seconds
    count = 0
    while time.thread_time() < end:
        count += 1
    return count


@ox.task
def hog(megabytes, seconds=0.0):
    """Touches ``megabytes`` of memory, frees it, then naps."""
    import time

    block = np.ones(megabytes * 2**20 // 8)
    block += 1
    del block
    time.sleep(seconds)
    return megabytes


@ox.task
def leaky(megabytes, tag=None):
    """Keeps ``megabytes`` more memory alive at each call: a leak."""
    _kept.append(b"\x01" * (megabytes * 2**20))
    return len(_kept)


@ox.task
def tidy(megabytes, tag=None):
    block = bytearray(megabytes * 2**20)
    return len(block)


# -- tiles -----------------------------------------------------------------------------------------


def mean3x3(window):
    """A 3x3 mean filter; the array's edges are repeated (so a tile at an edge of the array sees
    the same neighbours as the whole array does)."""
    padded = np.pad(window, 1, mode="edge")
    rows, cols = window.shape
    total = np.zeros(window.shape, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            total += padded[dy : dy + rows, dx : dx + cols]
    return total / 9


def scaled_sqrt(window):
    """Pointwise: its output has the shape of the window it gets."""
    return np.sqrt(window) * 2.0


class CustomBaseError(BaseException):
    """A BaseException that is neither an Exception nor one Python raises itself."""


@ox.task
def raise_base_exception(kind, log=None):
    """Raises a BaseException (``kind``: system_exit, keyboard_interrupt, cancelled, custom)."""
    import asyncio

    if log:
        _append(log, "x")
    errors = {
        "system_exit": lambda: SystemExit(3),
        "keyboard_interrupt": lambda: KeyboardInterrupt("raised by the task"),
        "cancelled": lambda: asyncio.CancelledError("raised by the task"),
        "custom": lambda: CustomBaseError("raised by the task"),
    }
    raise errors[kind]()


def preloaded(name, marker=None):
    """(this process's pid, whether module ``name`` was imported before this call); with
    ``marker``, SIGKILLs its worker the first time (its replacement runs it again)."""
    import os
    import signal
    import sys

    imported = name in sys.modules
    if marker is not None and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid(), imported


def count_running(directory, seconds=0.3):
    """How many calls of this function run now, itself included (each holds a file in
    ``directory`` while it runs)."""
    import os
    import time

    mine = os.path.join(directory, str(os.getpid()))
    open(mine, "w").close()
    try:
        running = len(os.listdir(directory))
        time.sleep(seconds)
        return max(running, len(os.listdir(directory)))
    finally:
        os.remove(mine)
