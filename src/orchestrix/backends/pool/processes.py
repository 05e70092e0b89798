"""Worker processes of the ``multiprocessing`` backend: starting, watching, stopping them."""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import socket
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from typing import Any

from ... import failures
from ...errors import OrchestrixError, TaskError
from ...worker.observe import WorkerSettings, worker_name
from . import warmup
from .child import worker_main
from .policy import Cause
from .protocol import Channel, Stop

__all__ = [
    "Launcher",
    "StopReason",
    "Worker",
    "interruption_error",
    "stop_all",
]

logger = logging.getLogger("orchestrix")

#: seconds a worker gets to exit after SIGTERM before SIGKILL
TERMINATE_GRACE_SECONDS = 1.0

_forkserver_users = 0  # live pools that rely on a forkserver orchestrix started
_forkserver_lock = threading.Lock()
_forkserver_ours = False
_forkserver_preload: tuple[str, ...] = ()  # the preload modules of the forkserver we started


class StopReason(enum.Enum):
    """Why the pool stops a worker; None on a worker means it ended on its own (a crash)."""

    #: it ran its ``max_tasks_per_worker`` jobs; a replacement took its place
    RETIRE = "retire"
    #: its job ran longer than ``per_job_timeout``
    TIMEOUT = "timeout"
    #: it went over ``max_ram_per_worker``
    MEMORY = "memory"
    #: no job finished anywhere for ``task_timeout``: the pool restarts its busy workers
    STALL = "stall"
    #: the pool is closing
    CLOSE = "close"


class Worker:
    """One worker process and what the manager knows of it."""

    def __init__(self, process: Any, channel: Channel, started: Any) -> None:
        self.process = process
        self.pid = int(process.pid)  # kept: a closed process object no longer says it
        self.channel = channel
        self.exit_handle = _exit_handle(process)
        self.started = started  # shared counter of the jobs the worker has started
        self.outstanding: deque[Any] = deque()  # jobs sent, in order; the first one is running
        self.last_progress = 0.0  # when its running job started, at the latest
        self.done = 0
        self.stopping: StopReason | None = None
        self.replaced = False  # retiring: its replacement is started already
        self.exitcode: int | None = None  # known once it has ended
        self.start_error: str | None = None  # the traceback it sent if it could not start
        # False until it has imported the preload modules: a job's clock must not count them
        self.ready = True
        self.peak_rss_mb = 0.0
        # limits="warn": the last_progress whose timeout was warned about, the job whose memory
        self.timed_out: float | None = None
        self.memory_warned: int | None = None
        self.name = worker_name(self.pid)  # as the worker names itself

    @property
    def watched(self) -> bool:
        """Whether its jobs are timed and its memory sampled: it runs jobs and the pool did not
        stop it (a retiring worker still runs its last ones)."""
        return bool(self.outstanding) and self.stopping in (None, StopReason.RETIRE)

    def send_stop(self) -> None:
        self.channel.send(Stop())

    def kill(self, reason: StopReason) -> None:
        self.stopping = reason
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass

    def sample_memory_mb(self) -> float:
        rss = private_rss_mb(self.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    def running_job(self) -> Any:
        """The job it runs now as the shared counter says; between jobs, the next one."""
        index = self.started.value - self.done - 1
        if 0 <= index < len(self.outstanding):
            return self.outstanding[index]
        return self.outstanding[0] if self.outstanding else None

    def split_outstanding(self) -> tuple[list[Any], Any, list[Any]]:
        """After the worker ended: (jobs it finished but whose results were lost with it, the job
        it was running or None, jobs it never started)."""
        jobs = list(self.outstanding)
        running = self.started.value - self.done - 1  # index of the running job in ``jobs``
        if running < 0:
            return [], None, jobs
        if running >= len(jobs):
            return jobs, None, []
        return jobs[:running], jobs[running], jobs[running + 1 :]

    def reap(self) -> None:
        self.process.join(timeout=TERMINATE_GRACE_SECONDS)
        self.close_handles()

    def close_handles(self) -> None:
        """Close the socket, the exit handle and the process's own descriptors now, not when
        the garbage collector gets to them (a traceback may keep the worker alive long)."""
        self.channel.close()
        if self.exit_handle != self.process.sentinel:
            os.close(self.exit_handle)
        self.exit_handle = -1
        self.exitcode = self.process.exitcode
        try:
            self.process.close()
        except ValueError:
            pass  # still running (it outlived the kill's grace period): its finalizer closes them


def _exit_handle(process: Any) -> int:
    """A descriptor that becomes readable when ``process`` exits.

    A pidfd (Linux) where there is one: the process sentinel is a pipe that the worker's own
    children inherit, so it would only fire once a task's forked child had exited too."""
    try:
        return os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return int(process.sentinel)


class Launcher:
    """Starts workers with the configured start method."""

    def __init__(
        self,
        mp_mode: str,
        dump_dir: str | None,
        settings: WorkerSettings,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.method = _usable_start_method(mp_mode)
        self.context: Any = multiprocessing.get_context(self.method)
        self.dump_dir = dump_dir
        self.settings = settings
        self.preload = preload
        self._uses_forkserver = False
        if self.method == "forkserver":
            self._uses_forkserver = True
            _acquire_forkserver(self.context, preload)

    def spawn(self) -> Worker:
        parent_end, child_end = socket.socketpair()
        try:
            started = self.context.RawValue("q", 0)
            process = self.context.Process(
                target=worker_main,
                args=(child_end, self.dump_dir, started, self.settings, os.getpid(), self.preload),
                name="orchestrix-worker",
                daemon=True,
            )
            with _main_module_hidden():
                process.start()
        except EOFError as exc:  # the forkserver died: it answers nothing
            parent_end.close()
            if self._uses_forkserver and self.preload:
                raise OrchestrixError(failures.forkserver_died(self.preload, exc)) from exc
            raise
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        worker = Worker(process, Channel(parent_end), started)
        worker.ready = not self.preload
        return worker

    def close(self) -> None:
        if self._uses_forkserver:
            self._uses_forkserver = False
            _release_forkserver()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a process without making it re-import the caller's ``__main__``.

    With spawn and forkserver, multiprocessing re-runs the main script in every child, which
    breaks scripts without an ``if __name__ == "__main__"`` guard. Workers do not need it: work
    defined in ``__main__`` travels by value (cloudpickle). So hide the script from the
    preparation data while the process starts.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved_file, saved_spec = main.__dict__.pop("__file__", None), getattr(main, "__spec__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__spec__ = saved_spec
        if saved_file is not None:
            main.__file__ = saved_file


def stop_all(workers: list[Worker]) -> None:
    """Terminate workers, then kill those still alive after the grace period; reap them all."""
    for worker in workers:
        if worker.process.is_alive():
            try:
                worker.process.terminate()
            except (OSError, ValueError):
                pass
    for worker in workers:
        worker.process.join(timeout=TERMINATE_GRACE_SECONDS)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=TERMINATE_GRACE_SECONDS)
        worker.close_handles()


def interruption_error(worker: Worker, unit: Any, cause: Cause, config: Any) -> TaskError:
    """The error for a job whose worker ended while running it, by cause."""
    key, name = unit.key, unit.name
    if cause is Cause.TIMEOUT:
        return failures.timeout_error(key, name, config.per_job_timeout)
    if cause is Cause.MEMORY:
        return failures.memory_error(key, name, worker.peak_rss_mb, config.max_ram_per_worker)
    if cause is Cause.STALL:
        return failures.stall_error(key, name, config.task_timeout)
    if cause is Cause.CLOSE:
        return failures.closed_error(key, name)
    return failures.crash_error(key, name, worker.exitcode, worker.pid)


def private_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` that it owns (anonymous pages), in MB.

    Pages of memory-mapped inputs (dump files) are shared with the page cache and do not count.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except Exception:  # noqa: BLE001 - the process is gone or unreadable
        return 0.0


def _usable_start_method(mp_mode: str) -> str:
    available = multiprocessing.get_all_start_methods()
    if mp_mode in available:
        return mp_mode
    warnings.warn(
        f"mp_mode={mp_mode!r} is not available on {sys.platform}; using 'spawn'",
        RuntimeWarning,
        stacklevel=4,
    )
    return "spawn"


def _acquire_forkserver(context: Any, preload: tuple[str, ...]) -> None:
    """Start the forkserver with orchestrix (and numpy when the caller uses it) and ``preload``
    imported, so that each worker starts as a fork of a warm process; remember whether
    orchestrix started it.

    The forkserver is the process's, shared by every pool, and started once: it is stopped when
    the last pool that uses it closes (if orchestrix started it), and the next pool starts it
    again with its own modules. A pool that opens while it runs and wants modules it lacks is
    not given a new one (its workers are the forkserver's children, and would die with it):
    its workers import those modules as they start, each replacement again."""
    global _forkserver_users, _forkserver_ours, _forkserver_preload
    with _forkserver_lock:
        server: Any = multiprocessing.forkserver._forkserver
        if _forkserver_users == 0 and server._forkserver_pid is None:
            modules = [worker_main.__module__]
            if "numpy" in sys.modules:
                modules.append("numpy")
            if preload:
                modules.append(warmup.__name__)
            context.set_forkserver_preload(modules)
            with _preload_listed(preload):
                server.ensure_running()
            _forkserver_ours, _forkserver_preload = True, preload
        else:
            _note_missing(preload)
        _forkserver_users += 1


@contextlib.contextmanager
def _preload_listed(preload: tuple[str, ...]) -> Iterator[None]:
    """The environment variable that tells :mod:`.warmup` what to import, while the forkserver
    starts (it inherits the environment then); the caller's environment is left as it was."""
    if not preload:
        yield
        return
    os.environ[warmup.ENV] = json.dumps(
        {"modules": list(preload), "sys_path": list(map(str, sys.path))}
    )
    try:
        yield
    finally:
        os.environ.pop(warmup.ENV, None)


def _note_missing(preload: tuple[str, ...]) -> None:
    """Say which preload modules the running forkserver lacks: each worker pays for them."""
    missing = [name for name in preload if not _forkserver_ours or name not in _forkserver_preload]
    if missing:
        logger.warning(
            "orchestrix: the forkserver was started before this orchestrator without the preload "
            "modules %s; each worker imports them as it starts",
            ", ".join(missing),
        )


def _release_forkserver() -> None:
    """Stop the forkserver when the last pool that relies on it closes, if orchestrix started it."""
    global _forkserver_users, _forkserver_ours
    with _forkserver_lock:
        _forkserver_users -= 1
        if _forkserver_users == 0 and _forkserver_ours:
            server: Any = multiprocessing.forkserver._forkserver
            stop = getattr(server, "_stop", None)
            if stop is not None and server._forkserver_pid is not None:
                stop()
            _forkserver_ours = False
