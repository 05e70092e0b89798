"""``python -m orchestrix status OUT_DIR``: what a run's journal says, while it runs or after.

A task running much longer than the mean of its name is the first thing to look at in a run that
seems stuck: status lists the tasks running longest, with their worker.

It only reads: the journal (SQLite in WAL mode) may be written by the live run meanwhile.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import time
from typing import Any

from ..errors import OrchestrixError
from ..monitoring.monitor import format_seconds
from .journal import JOURNAL_FILE, STATES, connect, run_is_alive, task_columns, unusable_journal

__all__ = ["format_status", "read_status"]

#: the tasks running longest that status lists
MAX_RUNNING = 5


def read_status(out_dir: str) -> dict[str, Any]:
    """The state of the run in ``out_dir``: counts per state, failed tasks, the tasks running
    longest, time per task name, the last run and whether it is alive."""
    path = os.path.join(out_dir, JOURNAL_FILE)
    if not os.path.exists(path):
        raise OrchestrixError(
            f"no journal in {out_dir!r}: a run writes {JOURNAL_FILE} when out_dir is set"
        )
    try:
        connection = connect(path, readonly=True)
        try:
            return _query(connection, out_dir)
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise unusable_journal(path, exc) from None


def _query(connection: sqlite3.Connection, out_dir: str) -> dict[str, Any]:
    counts = dict.fromkeys(STATES, 0)
    counts.update(connection.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
    (loaded,) = connection.execute(
        "SELECT count(*) FROM tasks WHERE state = 'DONE' AND resumed = 1"
    ).fetchone()
    # a journal written before the failed calls' inputs were kept has no such column
    inputs = "inputs" if "inputs" in task_columns(connection) else "NULL"
    failed = [
        {"key": key, "name": name, "worker": worker, "error": _last_line(error), "inputs": call}
        for key, name, worker, error, call in connection.execute(
            f"SELECT key, name, worker, error, {inputs} FROM tasks WHERE state = 'FAILED' "
            "ORDER BY ended, key"
        )
    ]
    by_name = [
        {"name": name, "count": count, "mean_s": mean, "max_peak_rss_mb": peak}
        for name, count, mean, peak in connection.execute(
            "SELECT name, count(*), avg(ended - started), max(peak_rss_mb) FROM tasks "
            "WHERE state = 'DONE' AND ended IS NOT NULL GROUP BY name "
            "ORDER BY sum(ended - started) DESC"
        )
    ]
    running = [
        {"key": key, "name": name, "state": state, "worker": worker, "started": started}
        for key, name, state, worker, started in connection.execute(
            "SELECT key, name, state, worker, started FROM tasks "
            "WHERE state IN ('RUNNING', 'TESTING') ORDER BY started LIMIT ?",
            (MAX_RUNNING,),
        )
    ]
    row = connection.execute(
        "SELECT id, host, pid, started, ended, outcome FROM runs ORDER BY id DESC LIMIT 1"
    ).fetchone()
    # the runs whose tasks the journal holds: since the last one that started a new journal
    runs, first_started = connection.execute(
        "SELECT count(*), min(started) FROM runs "
        "WHERE id >= (SELECT coalesce(max(id), 0) FROM runs WHERE resume = 0)"
    ).fetchone()
    run = None
    if row is not None:
        run = dict(zip(("id", "host", "pid", "started", "ended", "outcome"), row, strict=True))
    return {
        "out_dir": out_dir,
        "alive": run_is_alive(out_dir),
        "run": run,
        "runs": runs,
        "first_started": first_started,
        "counts": counts,
        "total": sum(counts.values()),
        "loaded": loaded,
        "failed": failed,
        "running": running,
        "by_name": by_name,
        "now": time.time(),
    }


def format_status(status: dict[str, Any], max_failed: int = 20) -> str:
    """The status as lines of text, for a terminal."""
    lines = [_run_line(status)]
    if status.get("runs", 0) > 1:  # a resumed run, or a pipeline of several orchestrators
        lines.append(
            f"  the journal holds {status['runs']} runs, the first started "
            f"{_when(status['first_started'])}"
        )
    counts = status["counts"]
    states = ", ".join(f"{state} {counts[state]:,}" for state in STATES if counts[state])
    total = status["total"]
    done = f", {counts['DONE'] / total:.0%} done" if total else ""
    lines.append(f"tasks: {total:,}" + (f" ({states}{done})" if states else ""))
    if status["loaded"]:
        lines.append(
            f"  of which DONE in an earlier run and loaded by resume: {status['loaded']:,}"
        )
    failed = status["failed"]
    if failed:
        lines.append(f"failed tasks ({len(failed)}):")
        for task in failed[:max_failed]:
            lines.append(f"  {task['name']} ({task['key']}): {task['error'] or '?'}")
            if task.get("inputs"):
                lines.append(f"    on {task['inputs']}")
        if len(failed) > max_failed:
            lines.append(f"  ... and {len(failed) - max_failed} more")
    if status["running"] and status["alive"]:
        lines.append("running longest:")
        for task in status["running"]:
            since = (
                "" if task["started"] is None else format_seconds(status["now"] - task["started"])
            )
            lines.append(
                f"  {task['name']} ({task['key']}) on {task['worker'] or '?'}: {task['state']} "
                f"for {since}"
            )
    if status["by_name"]:
        lines.append(f"{'task':<32} {'done':>8} {'mean time':>10} {'peak RSS':>10}")
        for entry in status["by_name"]:
            mean, peak = entry["mean_s"], entry["max_peak_rss_mb"]
            lines.append(
                f"{entry['name'][:32]:<32} {entry['count']:>8,} "
                f"{'-' if mean is None else format_seconds(mean):>10} "
                f"{'-' if peak is None else f'{peak:,.0f} MB':>10}"
            )
    return "\n".join(lines)


def _run_line(status: dict[str, Any]) -> str:
    run = status["run"]
    if run is None:
        return "no run recorded"
    where = f"run {run['id']} on {run['host']} (pid {run['pid']}), started {_when(run['started'])}"
    if status["alive"]:
        return f"{where}: ALIVE"
    if run["ended"] is not None:
        return f"{where}: ended at {_when(run['ended'])}"
    return f"{where}: NOT ALIVE, ended without closing (killed or crashed)"


def _last_line(text: str | None) -> str | None:
    if not text:
        return text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
