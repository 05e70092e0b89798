"""Synthetic ``run.json`` data for the report tests: seeded, so every run draws the same report."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

NAMES = ("load_tile", "smooth", "slope", "tile_stats", "merge")
STARTED = 1763700000.0


def synthetic_run(
    nb_tasks: int = 200,
    nb_workers: int = 3,
    names: tuple[str, ...] = NAMES,
    nb_failures: int = 1,
    memory: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """A run of ``nb_tasks`` tasks dealt round-robin to ``nb_workers`` workers, each running
    one task after the other; the first ``nb_failures`` tasks failed."""
    rnd = random.Random(seed)
    workers = [f"host-{1000 + i}" for i in range(nb_workers)]
    clock = dict.fromkeys(workers, STARTED + 0.01)
    columns: dict[str, list[Any]] = {
        key: [] for key in ("key", "name", "worker", "start", "wall", "cpu", "peak_rss_mb", "ok")
    }
    for i in range(nb_tasks):
        worker, name = workers[i % nb_workers], names[i % len(names)]
        wall = rnd.lognormvariate(-5 + i % len(names), 1.0)  # a decade or so between names
        clock[worker] += rnd.random() * 0.002
        row = (f"{name}-{i:06x}", name, worker, clock[worker], wall, wall * 0.9, 100 + i % 50)
        for key, value in zip(columns, (*row, i >= nb_failures), strict=True):
            columns[key].append(value)
        clock[worker] += wall
    ended = max(clock.values()) + 0.01
    return {
        "version": 1,
        "mode": "multiprocessing",
        "nb_workers": nb_workers,
        "started": STARTED,
        "ended": ended,
        "tasks": columns,
        "memory": _memory(workers, ended, rnd) if memory else _columns(),
        "failures": [
            {
                "key": columns["key"][i],
                "name": columns["name"][i],
                "worker": columns["worker"][i],
                "error": "ValueError: tile 3 is empty",
                "traceback": 'Traceback (most recent call last):\n  File "t.py", line 1\n'
                "ValueError: tile 3 is empty",
            }
            for i in range(nb_failures)
        ],
        "summary": _summary(columns, workers, ended - STARTED, nb_failures),
    }


def _columns() -> dict[str, list[Any]]:
    return {"worker": [], "time": [], "rss_mb": []}


def _memory(workers: list[str], ended: float, rnd: random.Random) -> dict[str, list[Any]]:
    samples = _columns()
    for n, worker in enumerate(workers):
        for k in range(100):
            samples["worker"].append(worker)
            samples["time"].append(STARTED + (ended - STARTED) * k / 99)
            samples["rss_mb"].append(80 + 10 * n + 30 * k / 99 + rnd.random() * 5)
    return samples


def _summary(columns: dict[str, list], workers: list[str], wall: float, failed: int) -> dict:
    by_name = {}
    for name in dict.fromkeys(columns["name"]):
        walls = sorted(
            w
            for w, n, ok in zip(columns["wall"], columns["name"], columns["ok"], strict=True)
            if n == name and ok
        )
        if walls:
            by_name[name] = {
                "count": len(walls),
                "mean_s": math.fsum(walls) / len(walls),
                "median_s": walls[len(walls) // 2],
                "p95_s": walls[max(0, math.ceil(0.95 * len(walls)) - 1)],
                "total_s": math.fsum(walls),
                "max_peak_rss_mb": 149.0,
            }
    count, per_worker = len(columns["key"]), Counter(columns["worker"])
    return {
        "wall_seconds": wall,
        "tasks_done": count - failed,
        "tasks_failed": failed,
        "tasks_retried": 0,
        "throughput_per_s": (count - failed) / wall,
        "by_name": by_name,
        "workers": {w: {"tasks": per_worker[w], "peak_rss_mb": 149.0} for w in workers},
        "leaks": {"smooth": {"growth_mb_per_run": 0.75, "runs": 40}},
    }
