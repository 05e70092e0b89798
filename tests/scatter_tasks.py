"""Tasks that read a shared value (importable by workers)."""

from __future__ import annotations

import os

import numpy as np

import orchestrix as ox


@ox.task
def window_sum(grid, start, size=100):
    """The sum of a window of a 2-d array, or of a Dataset's variable ``a``."""
    data = grid["a"].values if hasattr(grid, "data_vars") else grid
    return float(np.asarray(data)[start : start + size, :size].sum())


def plain_window_sum(grid, start, size=100):
    return window_sum.func(grid, start, size)


@ox.task
def nested_sum(parts, start):
    """Shared values nested in a dict of lists."""
    return sum(window_sum.func(grid, start) for grid in parts["grids"]) + parts["offset"]


@ox.task
def who_reads(grid, _):
    """Which process, and which object in it, a task got."""
    return os.getpid(), id(grid)
