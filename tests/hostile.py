"""Hostile tasks and objects for the fault-injection tests, importable by worker processes.

A fault is named by a *kind* (what happens: an exception, an exit, a crash) and struck by
:func:`detonate`. The stage of a call's life where it strikes is chosen by the object that carries
it: :class:`PickleBomb` strikes when it is pickled, :class:`UnpickleBomb` when it is rebuilt, and
the task :func:`hostile` strikes while it runs or returns one of them as its result.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import orchestrix as ox
from tasks import recorded


class HostileError(Exception):
    """The ordinary exception that a hostile object raises."""


class HostileBaseException(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt: user code may define it."""


class NeedsArgs(Exception):
    """An exception that unpickling cannot rebuild: ``__init__`` requires two arguments, but
    ``BaseException.__reduce__`` gives it only the message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"needs-args code {code}: {detail}")


#: the name of the exception type that each kind raises (kinds that kill the process have none)
RAISED = {
    "raise": "HostileError",
    "sysexit": "SystemExit",
    "baseexc": "HostileBaseException",
    "keyboard": "KeyboardInterrupt",
    "cancelled": "CancelledError",
    "unrebuildable": "NeedsArgs",
}
UNREBUILDABLE_DETAIL = "unrebuildable-detail-4711"


def detonate(kind: str) -> None:
    """Strike the fault ``kind`` in this process, now."""
    if kind == "raise":
        raise HostileError(f"hostile fault {kind!r} in process {os.getpid()}")
    if kind == "unrebuildable":
        raise NeedsArgs(7, UNREBUILDABLE_DETAIL)
    if kind == "sysexit":
        sys.exit(3)
    if kind == "baseexc":
        raise HostileBaseException("a custom BaseException")
    if kind == "keyboard":
        raise KeyboardInterrupt
    if kind == "cancelled":
        raise asyncio.CancelledError
    if kind == "exit":
        os._exit(1)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError(f"unknown fault kind {kind!r}")


class PickleBomb:
    """Strikes ``kind`` when pickled."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self):
        detonate(self.kind)

    def __orchestrix_token__(self):  # the key must not pickle it: that would strike early
        return ("PickleBomb", self.kind)


class UnpickleBomb:
    """Pickles fine; strikes ``kind`` in the process that rebuilds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self):
        return (detonate, (self.kind,))

    def __orchestrix_token__(self):
        return ("UnpickleBomb", self.kind)


def argument_for(stage: str | None, kind: str | None):
    """The argument of :func:`hostile` that carries a fault of the call's own pickling."""
    if stage == "pickle-call":
        return PickleBomb(kind)
    if stage == "unpickle-call":
        return UnpickleBomb(kind)
    return 0


@ox.task
def hostile(arg, stage, kind, log=None):
    """Appends a line to ``log`` (to count its runs), then strikes at ``stage`` (None: none)."""
    if log:
        append(log, os.getpid())
    if stage == "run":
        detonate(kind)
    if stage == "pickle-result":
        return PickleBomb(kind)
    if stage == "unpickle-result":
        return UnpickleBomb(kind)
    return "ok"


def append(path, value):
    with open(path, "a") as stream:
        stream.write(f"{value}\n")


lines = recorded  # the calls that ran, one line each


# -- tasks that have children ------------------------------------------------------------------


@ox.task
def pool_of_its_own(method):
    """Runs a ``multiprocessing.Pool`` of two processes of start method ``method``."""
    import multiprocessing

    with multiprocessing.get_context(method).Pool(2) as pool:
        return pool.map(abs, [-1, -2, -3])


@ox.task
def orchestrator_of_its_own(method):
    """Runs an orchestrator of its own (multiprocessing, one worker)."""
    from tasks import inc

    with ox.Orchestrator(mode="multiprocessing", nb_workers=1, mp_mode=method) as orch:
        return orch.compute([inc(1), inc(2)])


@ox.task
def fork_then_die(pid_file, seconds=30):
    """Forks a child that sleeps ``seconds`` (its pid appended to ``pid_file``), then dies: the
    child keeps every file descriptor of its parent, the pipes to the pool included."""
    child = os.fork()
    if child == 0:
        time.sleep(seconds)
        os._exit(0)
    append(pid_file, child)
    os._exit(1)
