"""Chaos: workers are SIGKILLed at random moments while a graph of a few hundred tasks runs.

A thread of the test kills a random worker process after an exponentially distributed delay, a
bounded number of times. With more retries than kills, no task can run out of attempts, so the
run must end with the results of the ``sequential`` oracle, exactly, within the deadline. The
seed of each run is fixed (``ORCHESTRIX_CHAOS_SEED`` overrides it) and is named on failure.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading

import numpy as np
import psutil
import pytest

import orchestrix as ox
from deadline import DEADLINE, guarded, within
from tasks import add, checksum, make_array, scale, sleep_for, total

KILLS = 6
RETRIES = 10  # more than KILLS: a task survives even if every kill hits it
MEAN_DELAY = 0.25  # seconds between kills, on average
#: each chain naps this long in the chaos run: 40 naps on 2 workers keep the run going for 2 s at
#: least, far longer than the first delay drawn from any of the seeds
PAUSE = 0.1

METHODS = [
    m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()
]
BACKENDS: dict[str, dict] = {}
if "multiprocessing" in ox.backends.AVAILABLE:
    BACKENDS |= {f"mp-{m}": {"mode": "multiprocessing", "mp_mode": m} for m in METHODS}
if "local_dask" in ox.backends.AVAILABLE:
    BACKENDS["local_dask"] = {"mode": "local_dask"}
SEEDS = {name: 1000 + index for index, name in enumerate(BACKENDS)}


def chaos_graph(pause: float, chains: int = 40, group: int = 8) -> dict:
    """40 chains of 6 tasks (make, nap ``pause`` s, scale, scale, add of two of them, checksum;
    the first steps fuse), fanned in by groups of 8, then into one total: 246 tasks. One array
    in four is large enough to travel through a dump file."""
    sums, arrays = [], []
    for i in range(chains):
        n_bytes = 8 * (20_000 if i % 4 == 0 else 500)
        head = scale(sleep_for(pause, make_array(n_bytes, float(i))), 1.5)
        both = add(head, scale(head, 0.25 * (i % 3)))  # `head` has two readers: a fan-in
        arrays.append(both)
        sums.append(checksum(both))
    groups = [total(*sums[i : i + group]) for i in range(0, chains, group)]
    return {"total": total(*groups), "groups": groups, "arrays": arrays[::5]}


def worker_processes() -> list[psutil.Process]:
    """The workers among this process's descendants: not the resource tracker, not the
    forkserver (a child of ours whose own children are the workers)."""
    me = os.getpid()
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
            if "resource_tracker" in command:
                continue
            if "forkserver" in command and process.ppid() == me:
                continue
            found.append(process)
        except psutil.Error:
            continue
    return found


class Killer(threading.Thread):
    """SIGKILLs a random worker after each exponentially distributed delay, ``limit`` times."""

    def __init__(self, rng: random.Random, limit: int, mean_delay: float) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.rng, self.limit, self.mean_delay = rng, limit, mean_delay
        self.stopped = threading.Event()
        self.killed: list[int] = []

    def run(self) -> None:
        while len(self.killed) < self.limit:
            if self.stopped.wait(self.rng.expovariate(1 / self.mean_delay)):
                return
            workers = sorted(worker_processes(), key=lambda p: p.pid)
            if not workers:
                continue  # between a death and its replacement
            victim = self.rng.choice(workers)
            try:
                victim.send_signal(signal.SIGKILL)
                self.killed.append(victim.pid)
            except psutil.Error:
                continue


def assert_same(got, want, seed: int) -> None:
    assert got["total"] == want["total"], f"seed {seed}: total differs"
    assert got["groups"] == want["groups"], f"seed {seed}: group sums differ"
    for index, (a, b) in enumerate(zip(got["arrays"], want["arrays"], strict=True)):
        assert np.array_equal(a, b) and a.dtype == b.dtype, f"seed {seed}: array {index} differs"


@pytest.mark.timeout(4 * DEADLINE + 120)  # a backstop: `within` fails the test first
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_random_worker_kills_do_not_change_the_results(backend, oracle):
    seed = int(os.environ.get("ORCHESTRIX_CHAOS_SEED", SEEDS[backend]))
    print(f"chaos seed {seed} (set ORCHESTRIX_CHAOS_SEED={seed} to replay it)")
    want = oracle.compute(chaos_graph(0.0))  # the naps change no value
    options = {**BACKENDS[backend], "nb_workers": 2, "retries": RETRIES}
    with guarded(**options) as orch:
        killer = Killer(random.Random(seed), KILLS, MEAN_DELAY)
        killer.start()
        try:
            got = within(2 * DEADLINE, orch.compute, chaos_graph(PAUSE))
        finally:
            killer.stopped.set()
            killer.join()
        print(f"seed {seed}: killed {len(killer.killed)} workers: {killer.killed}")
        assert killer.killed, f"seed {seed}: the run ended before the first kill"
        assert_same(got, want, seed)
        assert within(DEADLINE, orch.compute, total(1, 2)) == 3  # still whole after the chaos
