"""Tasks returning xarray and pandas objects (importable by workers; xarray and pandas are
imported when a task runs, so that this module imports where they are absent)."""

from __future__ import annotations

import numpy as np

import orchestrix as ox

SIDE = 400  # 400 x 400 float64: 1.28 MB, over the dump threshold


@ox.task
def make_dataset(fill, side=SIDE):
    import xarray as xr

    grid = np.full((side, side), float(fill))
    labels = np.array([f"row{i}" for i in range(side)], dtype=object)  # pickled in band
    return xr.Dataset(
        {"a": (("y", "x"), grid), "b": (("y", "x"), grid * 2), "label": ("y", labels)},
        coords={"y": np.arange(side), "x": np.linspace(0.0, 1.0, side)},
        attrs={"title": "grid"},
    )


@ox.task
def make_dataarray(fill, side=SIDE):
    import xarray as xr

    return xr.DataArray(np.full((side, side), float(fill)), dims=("y", "x"), name="a")


@ox.task
def make_frame(fill, rows=100_000):
    import pandas as pd

    return pd.DataFrame(
        {"a": np.full(rows, float(fill)), "n": np.arange(rows), "s": ["x"] * rows},
        index=pd.RangeIndex(rows, name="row"),
    )


@ox.task
def make_series(fill, rows=100_000):
    import pandas as pd

    return pd.Series(np.full(rows, float(fill)), name="s")


@ox.task
def dataset_total(ds):
    ds["a"].values += 1  # an input changed in place: the file others read stays as it was
    return float(ds["a"].sum() + ds["b"].sum())


@ox.task(nout=2)
def two_datasets(fill):
    first = make_dataset.func(fill)
    return first, first * 3
