"""Task functions of the Executor contract tests, importable by worker processes."""

from __future__ import annotations

import os
import time

import numpy as np

import orchestrix as ox


def divide(a, b):
    return a / b


def lookup(key):
    return {"known": 1}[key]


def open_missing(path):
    with open(path) as stream:
        return stream.read()


def mark_then_wait(marker, release):
    """Writes ``marker`` (it ran), then runs until ``release`` exists."""
    with open(marker, "w"):
        pass
    while not os.path.exists(release):
        time.sleep(0.01)
    return marker


@ox.task
def divide_task(a, b):
    return a / b


@ox.task
def add_one_in_place(array):
    array += 1  # a task's input, changed in place: works in every mode
    return float(array.sum())


@ox.task
def napping(seconds):
    time.sleep(seconds)
    return seconds


@ox.task
def big_array(fill):
    return np.full(2**17, fill, dtype=np.float64)  # 1 MiB: through a dump file in a pool
