"""What the caller learns of its runs: one record per task execution, failures, retries.

Backends report every unit they finish (:meth:`Monitor.record_units`, called from whatever thread
they report from); the progress bars listen; :meth:`Monitor.summary` and :meth:`Monitor.run_data`
turn the records (:class:`TaskRecord`) into the run summary and the report's data.
Recording is kept to a record append per task: it runs for every task of every run (the
``timing`` profiling mode, the default).
"""

from __future__ import annotations

import html
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..failures import Failure, recorded
from ..records import (
    FailureRecord,
    Loaded,
    Recorded,
    Registered,
    Retried,
    Started,
    Stopped,
    TaskRecord,
    UnitLabels,
    UnitRun,
)

__all__ = ["Monitor", "NameStats", "RunSummary", "TaskRecord"]

#: listener(unit key, tasks in the unit, ok)
Listener = Callable[[str, int, bool], None]
#: at most this many memory points per worker in the report's data
MEMORY_POINTS = 2000
_new = tuple.__new__  # builds a record at half the cost of its class's __new__ (see .records)


@dataclass
class NameStats:
    """Times of the tasks of one name (seconds)."""

    count: int
    mean_s: float
    median_s: float
    p95_s: float
    total_s: float
    max_peak_rss_mb: float | None


@dataclass
class RunSummary:
    """``orch.summary()``: what ran, how long it took, how much memory it used."""

    wall_seconds: float
    tasks_done: int
    tasks_failed: int
    tasks_retried: int
    throughput_per_s: float
    #: final tasks a resumed run loaded from out_dir instead of running them
    tasks_loaded: int = 0
    by_name: dict[str, NameStats] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.tasks_done} tasks done, {self.tasks_failed} failed, {self.tasks_retried} "
            f"retried in {self.wall_seconds:.2f} s ({self.throughput_per_s:,.1f} tasks/s)"
        ]
        if self.tasks_loaded:
            lines.append(f"{self.tasks_loaded} final tasks loaded from an earlier run (resume)")
        if self.by_name:
            lines.append(
                f"{'task':<32} {'count':>7} {'mean':>9} {'median':>9} {'p95':>9} {'peak RSS':>10}"
            )
            for name, stats in self.by_name.items():
                lines.append(
                    f"{_clip(name, 32):<32} {stats.count:>7} {format_seconds(stats.mean_s):>9} "
                    f"{format_seconds(stats.median_s):>9} {format_seconds(stats.p95_s):>9} "
                    f"{_megabytes(stats.max_peak_rss_mb):>10}"
                )
        for worker, facts in self.workers.items():
            lines.append(
                f"worker {worker}: {facts['tasks']} tasks, peak RSS "
                f"{_megabytes(facts['peak_rss_mb'])}"
            )
        for name, leak in self.leaks.items():
            lines.append(
                f"loop_testing: {name} grows private memory by {leak['growth_mb_per_run']:+.2f} "
                f"MB per run ({leak['runs']} tasks tested)"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("task", "count", "mean", "median", "p95", "RSS"))
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{s.count}</td><td>{format_seconds(s.mean_s)}</td>"
            f"<td>{format_seconds(s.median_s)}</td><td>{format_seconds(s.p95_s)}</td>"
            f"<td>{_megabytes(s.max_peak_rss_mb)}</td></tr>"
            for name, s in self.by_name.items()
        )
        title = html.escape(str(self).splitlines()[0])
        return f"<table><caption>{title}</caption><tr>{head}</tr>{rows}</table>"


class Monitor:
    """Records of the tasks one orchestrator ran. Thread-safe: list appends are atomic."""

    def __init__(self) -> None:
        self.started = time.time()
        self.ended: float | None = None
        #: one record per task execution, in the order they were reported: plain tuples in the
        #: field order of :class:`TaskRecord` (read them as records with :meth:`task_records`).
        #: Plain, because a run keeps one per task and the garbage collector stops walking a
        #: tuple of strings and numbers, never a NamedTuple (a tuple subclass): a million
        #: records would be walked at every full collection.
        self.tasks: list[tuple[Any, ...]] = []
        self.failures: list[FailureRecord] = []
        self.retried = 0
        self.loaded = 0
        self.growth: dict[str, list[float]] = {}
        self._listeners: tuple[Listener, ...] = ()
        #: the journal and the user's callbacks (see :mod:`orchestrix.monitoring.events`)
        self.consumers: tuple[Any, ...] = ()
        #: whether a consumer listens to task states (a plain attribute: read for every unit)
        self.tracks_states = False
        self._lock = threading.Lock()

    # -- recording (backends) -----------------------------------------------------------------

    def record_outcome(self, outcome: Any, worker: str) -> None:
        """Record a unit's outcome whose usage was measured over the unit alone."""
        peak_rss_mb = outcome.usage.peak_rss_mb if outcome.usage is not None else None
        ok = outcome.failure is None
        run = _new(UnitRun, (outcome.unit, outcome.started, outcome.walls, ok, outcome.growth_mb))
        self.record_units(worker, outcome.cpu_per_wall(), peak_rss_mb, [run])

    def record_units(
        self,
        worker: str,
        cpu_per_wall: float,
        peak_rss_mb: float | None,
        runs: list[UnitRun],
    ) -> None:
        """Record units that ran in one window of a worker. ``run.walls`` has one entry per task
        that ran; the last one failed unless ``run.ok``. CPU
        time was measured over the window and is shared in proportion to wall time
        (``cpu_per_wall`` = window CPU / window wall); the peak memory is the window's.

        It runs for every task of every run, so the common case is kept to a record append."""
        append = self.tasks.append
        listeners = self._listeners
        for run in runs:
            unit, walls, ok = run.unit, run.walls, run.ok
            tasks = unit.tasks
            if len(walls) == 1:
                node = tasks[0]
                append((node.key, node.name, worker, run.started, walls[0], cpu_per_wall,
                        peak_rss_mb, ok))  # fmt: skip
            else:
                self._record_chain(tasks, worker, run.started, walls, cpu_per_wall, peak_rss_mb, ok)
            growth_mb = run.growth_mb
            if growth_mb:
                for node, growth in zip(tasks, growth_mb, strict=False):
                    self.growth.setdefault(node.name, []).append(growth)
            for listener in listeners:
                listener(unit.key, len(tasks), ok)
        for consumer in self.consumers:
            consumer.post(_new(Recorded, (worker, peak_rss_mb, runs)))

    def _record_chain(
        self,
        tasks: Any,
        worker: str,
        started: float,
        walls: list[float],
        cpu_per_wall: float,
        peak_rss_mb: float | None,
        ok: bool,
    ) -> None:
        last = len(walls) - 1
        for index, (node, wall) in enumerate(zip(tasks, walls, strict=False)):
            self.tasks.append((node.key, node.name, worker, started, wall, cpu_per_wall,
                               peak_rss_mb, ok or index < last))  # fmt: skip
            started += wall

    def note_failure(
        self, failure: Failure, worker: str | None = None, inputs: str | None = None
    ) -> None:
        """Record a failure the caller is told of (a task that raised, crashed, timed out);
        ``inputs``: the failed call, in one line."""
        error, text = recorded(failure)
        if text is None and error.__traceback__ is not None:
            text = "".join(traceback.format_exception(error))
        entry = FailureRecord(
            key=failure.key,
            name=failure.name,
            worker=worker,
            error=f"{type(error).__name__}: {error}",
            traceback=text,
            inputs=inputs,
        )
        self.failures.append(entry)
        for consumer in self.consumers:
            consumer.post(entry)

    def note_retry(self, unit: UnitLabels | None = None) -> None:
        """A unit goes back to the queue (its worker died, or stalled)."""
        self.retried += 1
        if unit is not None:
            for consumer in self.consumers:
                consumer.post(Retried(unit))

    # -- task states, for the consumers (see :mod:`orchestrix.monitoring.events`) -----------

    def note_registered(self, units: Sequence[UnitLabels], canary: bool = False) -> None:
        """A run will run these units (``canary``: in its test run, before the others)."""
        for consumer in self.consumers:
            consumer.post(Registered(units, canary))

    def note_started(
        self, units: Sequence[UnitLabels], worker: str, when: float | None = None
    ) -> None:
        """These units were sent to ``worker`` (or began there at ``when``, epoch seconds)."""
        if self.consumers:
            event = Started(units, worker, time.time() if when is None else when)
            for consumer in self.consumers:
                consumer.post(event)

    def note_stopped(self, units: Sequence[UnitLabels]) -> None:
        """A run stopped early; those of these units that were running are killed."""
        for consumer in self.consumers:
            consumer.post(Stopped(units))

    def note_loaded(self, tasks: list[tuple[str, str]]) -> None:
        """Final tasks ``(key, name)`` whose results a resumed run loaded instead of running."""
        self.loaded += len(tasks)
        for consumer in self.consumers:
            consumer.post(Loaded(tasks))

    def add_consumer(self, consumer: Any) -> None:
        with self._lock:
            self.consumers = (*self.consumers, consumer)
            self.tracks_states = True

    def close(self) -> None:
        if self.ended is None:
            self.ended = time.time()

    # -- listeners (progress bars) ------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    # -- reading ------------------------------------------------------------------------------

    def task_records(self) -> list[TaskRecord]:
        """A snapshot of the task records (workers may still be reporting), read by name."""
        return [_new(TaskRecord, values) for values in list(self.tasks)]

    def summary(self) -> RunSummary:
        records = self.task_records()
        done = [r for r in records if r.ok]
        failed_keys = {f.key for f in self.failures} | {r.key for r in records if not r.ok}
        ended = self.ended if self.ended is not None else time.time()
        return RunSummary(
            wall_seconds=ended - self.started,
            tasks_done=len(done),
            tasks_failed=len(failed_keys),
            tasks_retried=self.retried,
            throughput_per_s=_throughput(done),
            tasks_loaded=self.loaded,
            by_name=_stats_by_name(done),
            workers=_worker_facts(records),
            leaks={
                name: {"growth_mb_per_run": sum(values) / len(values), "runs": len(values)}
                for name, values in self.growth.items()
            },
        )

    def run_data(self, **facts: Any) -> dict[str, Any]:
        """The data of ``run.json`` and of the HTML report (columnar task records)."""
        records = self.task_records()
        columns = ("key", "name", "worker", "start", "wall", "cpu", "peak_rss_mb", "ok")
        rows = [
            (r.key, r.name, r.worker, r.start, r.wall, r.wall * r.cpu_per_wall, r.peak_rss_mb, r.ok)
            for r in records
        ]
        tasks = {column: [row[i] for row in rows] for i, column in enumerate(columns)}
        return {
            "version": 1,
            **facts,
            "started": self.started,
            "ended": self.ended if self.ended is not None else time.time(),
            "tasks": tasks,
            "memory": _memory_series(records),
            "failures": [failure._asdict() for failure in self.failures],
            "summary": self.summary().to_dict(),
        }


def _throughput(done: list[TaskRecord]) -> float:
    """Tasks per second over the span in which tasks ran."""
    if not done:
        return 0.0
    first = min(r.start for r in done)
    last = max(r.start + r.wall for r in done)
    return len(done) / max(last - first, 1e-9)


def _stats_by_name(done: list[TaskRecord]) -> dict[str, NameStats]:
    walls: dict[str, list[float]] = {}
    peaks: dict[str, float | None] = {}
    for record in done:
        walls.setdefault(record.name, []).append(record.wall)
        peaks[record.name] = _max(peaks.get(record.name), record.peak_rss_mb)
    stats = {}
    for name, values in walls.items():
        values.sort()
        total = math.fsum(values)
        stats[name] = NameStats(
            count=len(values),
            mean_s=total / len(values),
            median_s=_percentile(values, 50),
            p95_s=_percentile(values, 95),
            total_s=total,
            max_peak_rss_mb=peaks[name],
        )
    return dict(sorted(stats.items(), key=lambda item: -item[1].total_s))


def _worker_facts(records: Iterable[TaskRecord]) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = facts.setdefault(record.worker, {"tasks": 0, "peak_rss_mb": None})
        entry["tasks"] += 1
        entry["peak_rss_mb"] = _max(entry["peak_rss_mb"], record.peak_rss_mb)
    return dict(sorted(facts.items()))


def _memory_series(records: list[TaskRecord]) -> dict[str, list[Any]]:
    """Peak RSS per worker over time, from the task records: at most MEMORY_POINTS per worker,
    each the highest peak of its time bucket."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        if record.peak_rss_mb is not None:
            by_worker.setdefault(record.worker, []).append(
                (record.start + record.wall, record.peak_rss_mb)
            )
    series: dict[str, list[Any]] = {"worker": [], "time": [], "rss_mb": []}
    for worker, points in sorted(by_worker.items()):
        points.sort()
        for when, rss in _decimate(points):
            series["worker"].append(worker)
            series["time"].append(when)
            series["rss_mb"].append(rss)
    return series


def _decimate(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MEMORY_POINTS:
        return points
    first, last = points[0][0], points[-1][0]
    width = (last - first) / MEMORY_POINTS or 1.0
    buckets: dict[int, tuple[float, float]] = {}
    for when, rss in points:
        index = min(int((when - first) / width), MEMORY_POINTS - 1)
        kept = buckets.get(index)
        if kept is None or rss > kept[1]:
            buckets[index] = (when, rss)
    return [buckets[i] for i in sorted(buckets)]


def _percentile(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def format_seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def _megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"
