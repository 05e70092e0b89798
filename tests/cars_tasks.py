"""CARS task functions and synthetic inputs for the tests of orchestrix's CARS mode.

Plain functions (CARS wraps them itself, through ``orchestrator.cluster.create_task``), in a
module of tests/ so that every worker (orchestrix's and CARS's own) can import them. Each tile
task returns an xarray Dataset filled the way CARS's applications fill theirs
(``cars_dataset.fill_dataset`` with the tile's saving info, window and the raster's profile).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

#: the raster the tile tasks make: rows x cols, in TILE-sized tiles (3 x 3 tiles)
SHAPE = (120, 150)
TILE = (40, 50)
NODATA = -9999.0
TAG = "value"
PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "height": SHAPE[0],
    "width": SHAPE[1],
    "count": 1,
    "dtype": "float32",
    "crs": "EPSG:32631",
    "transform": Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 4800000.0),
    "nodata": NODATA,
}


def window_of(grid_cell: Any) -> dict[str, int]:
    """CARS's window dict of a tiling grid cell ``[row_min, row_max, col_min, col_max]``."""
    from cars.data_structures import cars_dataset

    return cars_dataset.window_array_to_dict(grid_cell)


def _filled(values: np.ndarray, window: dict[str, int], saving_info: Any) -> xr.Dataset:
    from cars.data_structures import cars_dataset

    rows = np.arange(window["row_min"], window["row_max"])
    cols = np.arange(window["col_min"], window["col_max"])
    dataset = xr.Dataset({TAG: (["row", "col"], values)}, coords={"row": rows, "col": cols})
    cars_dataset.fill_dataset(
        dataset, saving_info=saving_info, window=window, profile=dict(PROFILE), overlaps=None
    )
    return dataset


def expected_values(window: dict[str, int], seed: int) -> np.ndarray:
    """The values :func:`make_tile` computes for ``window`` (the oracle of replaced tiles)."""
    rows = np.arange(window["row_min"], window["row_max"], dtype=np.float32)[:, None]
    cols = np.arange(window["col_min"], window["col_max"], dtype=np.float32)[None, :]
    return (np.float32(seed) + rows * np.float32(0.5) + np.sin(cols / np.float32(7))).astype(
        np.float32
    )


def make_tile(window: dict[str, int], seed: int, saving_info: Any = None) -> xr.Dataset:
    """Stage 1: a tile of synthetic values."""
    return _filled(expected_values(window, seed), window, saving_info)


def double_tile(tile: xr.Dataset, saving_info: Any = None) -> xr.Dataset:
    """Stage 2: a tile computed from stage 1's tile."""
    window = tile.attrs["window"]
    return _filled(tile[TAG].values * np.float32(2), window, saving_info)


def split_tile(
    tile: xr.Dataset, saving_info_a: Any = None, saving_info_b: Any = None
) -> tuple[xr.Dataset, xr.Dataset]:
    """Two outputs from one tile (a task of ``nout=2``)."""
    window = tile.attrs["window"]
    values = tile[TAG].values
    return (
        _filled(values + np.float32(1), window, saving_info_a),
        _filled(values - np.float32(1), window, saving_info_b),
    )


def combine_tiles(a: xr.Dataset, b: xr.Dataset, saving_info: Any = None) -> xr.Dataset:
    """A consumer of two outputs."""
    return _filled(a[TAG].values * b[TAG].values, a.attrs["window"], saving_info)


def failing_tile(window: dict[str, int], seed: int, saving_info: Any = None) -> xr.Dataset:
    """A task that raises."""
    raise ValueError(f"synthetic failure of the tile at {window} (seed {seed})")


def next_attempt(directory: str) -> int:
    """The number of this attempt (0, 1, ...): each call creates ``attempt-<k>`` atomically."""
    os.makedirs(directory, exist_ok=True)
    attempt = 0
    while True:
        try:
            fd = os.open(
                os.path.join(directory, f"attempt-{attempt}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY
            )
        except FileExistsError:
            attempt += 1
            continue
        os.write(fd, json.dumps({"pid": os.getpid(), "time": time.time()}).encode())
        os.close(fd)
        return attempt


def stalling_tile(
    window: dict[str, int],
    seed: int,
    saving_info: Any = None,
    attempts_dir: str = "",
    stalls: int = 2,
    sleep_s: float = 120.0,
) -> xr.Dataset:
    """:func:`make_tile` that hangs (sleeps ``sleep_s``) on its first ``stalls`` attempts."""
    if next_attempt(attempts_dir) < stalls:
        time.sleep(sleep_s)
    return make_tile(window, seed, saving_info)


# -- synthetic DSMs for CARS's merging pipeline ------------------------------------------------

DSM_NODATA = -32768.0
WEIGHTS_NODATA = 0.0


def write_dsms(
    directory: str, count: int = 3, side: int = 300, seed: int = 0, step: int | None = None
) -> dict[str, dict[str, str]]:
    """``count`` overlapping DSMs of ``side`` x ``side`` pixels (1 m, EPSG:32631, float32, a
    nodata value), smooth heights plus noise from ``seed``, each with a weights raster: the
    ``input.dsms`` section of a merging configuration."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    step = step if step is not None else side // 5
    os.makedirs(directory, exist_ok=True)
    dsms: dict[str, dict[str, str]] = {}
    yy, xx = np.mgrid[0:side, 0:side]
    for k in range(count):
        x0 = 500000.0 + step * k
        y0 = 4800000.0 - (step * 3 // 4) * k
        x, y = x0 + xx + 0.5, y0 - yy - 0.5
        heights = 100 + 20 * np.sin(x / 40.0) * np.cos(y / 55.0) + rng.normal(0, 0.5, xx.shape)
        heights = heights.astype(np.float32)
        heights[rng.random(xx.shape) < 0.02] = DSM_NODATA
        weights = rng.uniform(0.5, 2.0, xx.shape).astype(np.float32)
        profile = {
            "driver": "GTiff",
            "height": side,
            "width": side,
            "count": 1,
            "dtype": "float32",
            "crs": "EPSG:32631",
            "transform": from_origin(x0, y0, 1.0, 1.0),
        }
        paths = {}
        for name, values, nodata in (
            ("dsm", heights, DSM_NODATA),
            ("weights", weights, WEIGHTS_NODATA),
        ):
            path = os.path.join(directory, f"{name}_{k}.tif")
            with rasterio.open(path, "w", nodata=nodata, **profile) as target:
                target.write(values, 1)
            paths[name] = path
        dsms[f"dsm_{k}"] = paths
    return dsms


def merging_config(
    dsms: dict[str, dict[str, str]], out_dir: str, orchestrator: dict[str, Any], tile_size: int
) -> dict[str, Any]:
    """A configuration of CARS's merging pipeline (``tile_size`` in metres: 1 m pixels)."""
    return {
        "pipeline": "merging",
        "input": {"dsms": dsms},
        "output": {"directory": out_dir},
        "orchestrator": orchestrator,
        "merging": {"applications": {"dsm_merging": {"tile_size": tile_size}}},
    }
