"""Deadlines for tests that could hang: a call that has not ended in time fails the test with
every thread's stack, and whatever processes the test started are killed, so that a hang costs
its deadline and leaves nothing behind."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import orchestrix as ox

#: seconds a call may take before it counts as a hang (``ORCHESTRIX_TEST_DEADLINE`` overrides).
#: Each call here takes under 4 s on 2 busy cores, spawn and local_dask included; 30 s keeps a
#: hang cheap, since the fault suite has close to a hundred cases that hang today.
DEADLINE = float(os.environ.get("ORCHESTRIX_TEST_DEADLINE", "30"))


def within(seconds: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, run in a thread: its value, or the exception it raised (a
    BaseException that is not an Exception fails the test). If it has not ended after
    ``seconds``, dump the stack of every thread and fail the test."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread as it is
            box["error"] = exc

    name = getattr(fn, "__qualname__", repr(fn))
    thread = threading.Thread(target=target, name=f"deadline:{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        stream = sys.__stderr__ or sys.stderr
        stream.write(f"\n--- {name} did not end within {seconds} s; every thread's stack:\n")
        stream.flush()
        faulthandler.dump_traceback(stream, all_threads=True)
        pytest.fail(f"{name} did not end within {seconds} s: a hang (stacks on stderr)")
    error = box.get("error")
    if error is not None and not isinstance(error, Exception):
        # Re-raised here, a KeyboardInterrupt would stop the whole test session.
        text = "".join(traceback.format_exception(error))
        pytest.fail(f"{name} let a raw {type(error).__name__} escape:\n{text}")
    if error is not None:
        raise error
    return box.get("value")


def descendants() -> set[int]:
    """Pids of this process's descendants."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def kill_new(before: set[int]) -> None:
    """SIGKILL the descendants that are not in ``before`` (the resource tracker is kept: the
    interpreter's, shared by every test)."""
    for pid in descendants() - before:
        try:
            process = psutil.Process(pid)
            if "resource_tracker" not in " ".join(process.cmdline()):
                process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue


@contextlib.contextmanager
def guarded(close_within: float = DEADLINE, **options: Any) -> Iterator[ox.Orchestrator]:
    """An orchestrator started under the deadline and closed within ``close_within`` seconds.
    When the test fails, the processes it started are killed after the close (when it passes,
    the leak check of conftest sees any that remain, so that a leak is not hidden)."""
    before = descendants()
    orch = within(DEADLINE, ox.Orchestrator, **options)
    failed = True
    try:
        yield orch
        failed = False
    finally:
        try:
            within(close_within, orch.close)
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                kill_new(before)
