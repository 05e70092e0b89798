"""What a process that runs tasks records about them: its log file, profiles, time and memory.

It runs wherever tasks run: in a multiprocessing worker, in a dask worker (through a plugin), or
in the caller in sequential mode. Everything is set up once per process (CARS added a log handler
per task, so each line was written again by every later task). Standard library only; memray is
imported when it is asked for.
"""

from __future__ import annotations

import cProfile
import gc
import logging
import os
import resource
import socket
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..records import Usage
from .execute import CURRENT, TaskCaller, UnitOutcome, call_task, run_unit

__all__ = [
    "MEASURED_RUNS",
    "WARM_UP_RUNS",
    "ProcessObserver",
    "UsageMeter",
    "WorkerSettings",
    "run_measured",
    "worker_name",
]

#: ``loop_testing`` runs each task this many times first, unmeasured: caches fill, and glibc
#: raises its mmap threshold after the first big free (memory it keeps would look like a leak)
WARM_UP_RUNS = 2
#: then this many times, measuring what each run leaves behind; then once more for the result
MEASURED_RUNS = 3
_new = tuple.__new__
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s [%(task)s] %(message)s"


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to know to observe its tasks; travels to the workers."""

    out_dir: str | None = None
    profiling: str = "timing"
    loop_testing: bool = False
    #: False in sequential mode: the process is the caller's, its logging is not ours to change
    own_process: bool = True


def worker_name(pid: int | None = None) -> str:
    """``host-pid``: the name of a worker in logs, file names and reports; that of this process
    by default, or of the worker process ``pid`` (the pool names its workers as they name
    themselves)."""
    return f"{socket.gethostname()}-{os.getpid() if pid is None else pid}"


class UsageMeter:
    """CPU time (of the process, or of this thread with ``clock=time.thread_time``) and peak
    resident memory of this process over a window.

    The peak is the kernel's high-water mark, reset at the start of each window where Linux
    allows it (``/proc/self/clear_refs``); elsewhere it is the peak since the process started.
    """

    def __init__(self, clock: Any = time.thread_time) -> None:
        self._clock = clock
        self._reset_fd: int | None = None
        try:
            self._reset_fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            pass
        self._cpu_start = 0.0

    def begin(self) -> None:
        self._cpu_start = self._clock()
        if self._reset_fd is not None:
            try:
                os.write(self._reset_fd, b"5")  # 5: reset the peak resident set size
            except OSError:
                os.close(self._reset_fd)
                self._reset_fd = None

    def end(self) -> Usage:
        """CPU seconds since :meth:`begin`, peak resident MB in the window."""
        cpu = self._clock() - self._cpu_start
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return _new(Usage, (cpu, peak_rss_mb))  # per unit: half the cost of Usage(...)

    def close(self) -> None:
        if self._reset_fd is not None:
            os.close(self._reset_fd)
            self._reset_fd = None


def run_measured(
    unit: Any, inputs: Any, meter: UsageMeter, caller: TaskCaller | None, remote: bool = False
) -> UnitOutcome:
    """Run ``unit`` with its CPU time and peak memory measured (``outcome.usage``)."""
    meter.begin()
    outcome = run_unit(unit, inputs, remote=remote, caller=caller)
    outcome.usage = meter.end()
    return outcome


class _OneLineEnd(logging.Formatter):
    """Drops trailing newlines (a captured warning ends with one): no blank lines in the file."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip()


class _TaskKeyFilter(logging.Filter):
    """Sets ``record.task`` to the running task's key; shared process: keeps tasks' records."""

    def __init__(self, only_in_tasks: bool) -> None:
        super().__init__()
        self.only_in_tasks = only_in_tasks

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(CURRENT, "key", None)
        if key is None and self.only_in_tasks:
            return False
        record.task = key or "-"
        return True


class ProcessObserver:
    """Sets up, for one process, what the ``out_dir`` and ``profiling`` keys ask for."""

    def __init__(self, settings: WorkerSettings, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or worker_name()
        self.loop_testing = settings.loop_testing
        self.last_growth_mb = 0.0
        self._handler: logging.Handler | None = None
        self._profile: cProfile.Profile | None = None
        self._tracker: Any = None
        self._started = False

    @property
    def wraps_calls(self) -> bool:
        """Whether tasks must run through :meth:`call` (else they are called directly)."""
        return self.loop_testing or self.settings.profiling == "cprofile"

    # -- process lifetime ---------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        out_dir = self.settings.out_dir
        if out_dir is not None:
            self._start_logging(out_dir)
        if self.settings.profiling == "cprofile":
            self._profile = cProfile.Profile()
        elif self.settings.profiling == "memray":
            self._tracker = start_memray(self.profile_path("memray", ".bin"))

    def stop(self) -> None:
        """Write the profiles and close the log file; safe to call twice."""
        if not self._started:
            return
        self._started = False
        if self._profile is not None:
            self._profile.create_stats()
            if self._profile.stats:  # a worker that ran no task writes none
                self._profile.dump_stats(self.profile_path("cprofile", ".prof"))
            self._profile = None
        if self._tracker is not None:
            tracker, self._tracker = self._tracker, None
            tracker.__exit__(None, None, None)
        if self._handler is not None:
            self._stop_logging()

    def profile_path(self, kind: str, suffix: str) -> str:
        assert self.settings.out_dir is not None, "the config refuses profiling without out_dir"
        directory = os.path.join(self.settings.out_dir, "profiling", kind)
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, f"worker-{self.name}{suffix}")

    # -- tasks --------------------------------------------------------------------------------

    def call(self, node: Any, values: Any) -> Any:
        """Run one task under the profiler, and several times when ``loop_testing`` is on."""
        if self.loop_testing:
            return self._call_in_loop(node, values)
        return self._call_once(node, values)

    def _call_in_loop(self, node: Any, values: Any) -> Any:
        """Run the task a few times and measure what each measured run leaves behind: the larger
        of the growth of the Python heap (tracemalloc, exact for Python objects and numpy arrays)
        and of private resident memory (which also sees leaks in C libraries, but misses a leak
        that reuses memory freed earlier)."""
        for _ in range(WARM_UP_RUNS):
            result = self._call_once(node, values)
            del result
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            gc.collect()
            heap, private = tracemalloc.get_traced_memory()[0], _private_without_tracemalloc()
            for _ in range(MEASURED_RUNS):
                result = self._call_once(node, values)
                del result
            gc.collect()
            heap_growth = (tracemalloc.get_traced_memory()[0] - heap) / 2**20
            private_growth = _private_without_tracemalloc() - private
        finally:
            if not tracing:
                tracemalloc.stop()
        self.last_growth_mb = max(heap_growth, private_growth) / MEASURED_RUNS
        return self._call_once(node, values)

    def _call_once(self, node: Any, values: Any) -> Any:
        profile = self._profile
        if profile is None:
            return call_task(node, values)
        profile.enable()
        try:
            return call_task(node, values)
        finally:
            profile.disable()

    # -- logging ------------------------------------------------------------------------------

    def _start_logging(self, out_dir: str) -> None:
        directory = os.path.join(out_dir, "workers_log")
        os.makedirs(directory, exist_ok=True)
        handler = logging.FileHandler(
            os.path.join(directory, f"worker-{self.name}.log"), encoding="utf-8", delay=True
        )
        handler.setFormatter(_OneLineEnd(WORKER_LOG_FORMAT))
        handler.addFilter(_TaskKeyFilter(only_in_tasks=not self.settings.own_process))
        root = logging.getLogger()
        if self.settings.own_process:
            # A forked worker inherits the caller's handlers (its log file among them): every
            # line would be written twice. This process is ours: its logging is too.
            for inherited in (root, logging.getLogger("orchestrix")):
                for old in list(inherited.handlers):
                    inherited.removeHandler(old)
            root.setLevel(logging.INFO)
            logging.captureWarnings(True)  # a task's warnings land in the file, with its key
        root.addHandler(handler)
        self._handler = handler
        logging.getLogger("orchestrix.worker").info(
            "worker %s started (python %s)", self.name, sys.version.split()[0]
        )

    def _stop_logging(self) -> None:
        assert self._handler is not None
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()
        self._handler = None


def start_memray(path: str) -> Any:
    """Start a memray capture of this process into ``path``; the caller ends it."""
    try:
        import memray
    except ImportError:
        raise ConfigError(
            "profiling mode 'memray' needs the memray package: "
            "python -m pip install 'orchestrix[profiling]'"
        ) from None
    if os.path.exists(path):
        os.unlink(path)  # a pid reused by a later run of the same out_dir
    tracker = memray.Tracker(path, follow_fork=False, native_traces=False)
    tracker.__enter__()
    return tracker


def _private_without_tracemalloc() -> float:
    """Private memory, less what tracemalloc uses for its own traces (MB)."""
    return private_memory_mb() - tracemalloc.get_tracemalloc_memory() / 2**20


def private_memory_mb() -> float:
    """Resident memory this process does not share (heap and anonymous maps), in MB."""
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            fields = stream.read().split()
        return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
