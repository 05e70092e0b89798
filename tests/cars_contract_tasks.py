"""Task functions of the CARS cluster tests, importable by worker processes (as CARS's own
application functions are: by module and name)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def split(value):
    """Two outputs, as CARS's two-output tasks return them."""
    return value, value * 10


def combine(first, second, extra):
    return {"sum": first + second + sum(extra["more"])}


def tile(row, col, size):
    """An xarray tile large enough to travel through a dump file."""
    values = np.full((size, size), row * 100 + col, dtype=np.float64)
    return xr.Dataset(
        {"hgt": (("row", "col"), values)},
        coords={"row": np.arange(size), "col": np.arange(size)},
        attrs={"tile": (row, col)},
    )


def shift(dataset, offset):
    """A chained stage: takes the previous stage's Dataset."""
    out = dataset.copy(deep=True)
    out["hgt"] = out["hgt"] + offset
    return out


def window_sum(grid, row):
    """Reads a shared input."""
    return float(grid["hgt"].values[row].sum())
