"""A 200-task job for the resume tests: run as a script (a child that the test kills) or imported.

``python durable_job.py OPTIONS_JSON OUT_DIR LOG`` runs it with ``resume=True``; every task
execution appends a line to LOG, so a test can count what ran in each process.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import orchestrix as ox

TASKS = 200


def _append(path: str, text: str) -> None:
    with open(path, "a") as stream:
        stream.write(text + "\n")  # one short write: a line is whole or absent


@ox.task
def square(i: int, log: str, seconds: float) -> int:
    import time

    time.sleep(seconds)
    _append(log, f"square-{i}")
    return i * i


@ox.task
def finish(value: int, i: int, log: str) -> object:
    """Final task: an array for even i (stored as .npy), a dict for odd i (pickled)."""
    _append(log, f"finish-{i}")
    if i % 2 == 0:
        return np.arange(i % 7 + 1, dtype=np.float64) * value
    return {"i": i, "value": value, "text": f"tile {i}"}


def targets(log: str, seconds: float = 0.02) -> list[ox.Delayed]:
    return [finish(square(i, log, seconds), i, log) for i in range(TASKS)]


def expected() -> list[object]:
    """The results of an uninterrupted run, computed without orchestrix."""
    out: list[object] = []
    for i in range(TASKS):
        value = i * i
        if i % 2 == 0:
            out.append(np.arange(i % 7 + 1, dtype=np.float64) * value)
        else:
            out.append({"i": i, "value": value, "text": f"tile {i}"})
    return out


def run(options: dict, out_dir: str, log: str, seconds: float = 0.02) -> list[object]:
    with ox.Orchestrator(**options, out_dir=out_dir, resume=True) as orch:
        return orch.compute(targets(log, seconds))


if __name__ == "__main__":
    import durable_job  # the tasks' module must be durable_job, as in the rerun, not __main__

    durable_job.run(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])
