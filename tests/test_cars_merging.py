"""A differential run of CARS's merging pipeline through the ``cars`` command line: the DSM that
orchestrix's mode writes equals the one CARS's own sequential and multiprocessing modes write.

Three overlapping synthetic DSMs (300 x 300 pixels, 1 m, EPSG:32631, float32, a nodata value,
smooth heights plus seeded noise, each with its weights raster) are merged by the
``weighted_fusion`` application in 100 m tiles: 4 x 5 = 20 tiles over the 420 x 390 m union.

Workaround of a CARS 1.3.0 bug: ``dsm_merging/weighted_fusion_app.py`` writes the output's CRS
as ``"EPSG:{}".format(crs)`` with a rasterio CRS whose str() is already ``"EPSG:32631"``, i.e.
``"EPSG:EPSG:32631"``. rasterio refuses it, CARS's saver logs "Tile not saved" and goes on, and
every mode that saves tiles from memory (CARS's sequential, orchestrix's) writes an all-nodata
DSM with exit code 0; only CARS's multiprocessing mode repairs the profile in its dump round
trip. No CRS of the inputs avoids it (str() of an EPSG CRS is always "EPSG:<code>"), so each
``cars`` process runs with tests/cars_crs_fix on its PYTHONPATH: its ``sitecustomize`` removes
the doubled prefix from the profile CARS reads off a tile (cars_dataset.get_profile_rasterio),
in every mode alike. The test also checks that the DSM is not all nodata, so that the bug
cannot hide behind equal, empty outputs.

Each run's wall time is printed (``-s`` shows it), never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("cars")

import rasterio

import cars_tasks as ct

TESTS = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(TESTS), "src")
#: seconds a ``cars`` run may take (each takes 10-30 s on 2 busy cores)
RUN_TIMEOUT_S = 240
TILE_SIZE = 100  # metres, 1 m pixels: 20 tiles

MODES = {
    "cars-sequential": {"mode": "sequential"},
    "cars-multiprocessing": {"mode": "multiprocessing", "nb_workers": 2},
    "orchestrix-multiprocessing": {"mode": "orchestrix", "backend": "multiprocessing",
                                   "nb_workers": 2},
    "orchestrix-sequential": {"mode": "orchestrix", "backend": "sequential"},
    "orchestrix-local_dask": {"mode": "orchestrix", "backend": "local_dask", "nb_workers": 2},
}  # fmt: skip


def cars_env() -> dict[str, str]:
    """The environment of a ``cars`` process: this tree's orchestrix, the CRS workaround."""
    env = dict(os.environ)
    paths = [os.path.join(TESTS, "cars_crs_fix"), SRC, env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


def cars_command() -> list[str]:
    """The ``cars`` script next to this interpreter (``python -m cars.cars`` without one)."""
    script = os.path.join(os.path.dirname(sys.executable), "cars")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-m", "cars.cars"]


def run_cars(config: dict, directory: str, name: str) -> float:
    """``cars <config>``: its wall time. Fails the test with the end of its log on an error."""
    path = os.path.join(directory, f"{name}.json")
    with open(path, "w", encoding="utf8") as stream:
        json.dump(config, stream, indent=2)
    started = time.perf_counter()
    done = subprocess.run(
        [*cars_command(), path, "--logtype", "plain"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=cars_env(), cwd=directory,
    )  # fmt: skip
    wall = time.perf_counter() - started
    assert done.returncode == 0, f"cars {name} failed:\n{(done.stdout + done.stderr)[-4000:]}"
    assert "Tile not saved" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    return wall


def read_dsm(out_dir: str) -> tuple[np.ndarray, dict]:
    with rasterio.open(os.path.join(out_dir, "dsm", "dsm.tif")) as source:
        return source.read(), dict(source.profile)


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict:
    """Each mode's merged DSM, computed once (``cars`` run lazily per mode)."""
    directory = str(tmp_path_factory.mktemp("merging"))
    dsms = ct.write_dsms(os.path.join(directory, "inputs"), count=3, side=300, seed=7)
    cache: dict[str, tuple[np.ndarray, dict]] = {}

    def get(mode: str) -> tuple[np.ndarray, dict]:
        if mode not in cache:
            out_dir = os.path.join(directory, mode)
            config = ct.merging_config(dsms, out_dir, dict(MODES[mode]), TILE_SIZE)
            wall = run_cars(config, directory, mode)
            print(f"\ncars merging, {mode}: {wall:.1f} s")
            cache[mode] = read_dsm(out_dir)
        return cache[mode]

    return get


def assert_same_dsm(actual: tuple[np.ndarray, dict], expected: tuple[np.ndarray, dict]) -> None:
    np.testing.assert_array_equal(actual[0], expected[0])
    assert actual[1] == expected[1]
    assert actual[1]["crs"] == expected[1]["crs"]
    assert actual[1]["transform"] == expected[1]["transform"]


def assert_not_empty(dsm: tuple[np.ndarray, dict]) -> None:
    values, profile = dsm
    assert profile["crs"] is not None and profile["crs"].to_epsg() == 32631
    assert (profile["width"], profile["height"]) == (420, 390)
    valid = values != profile["nodata"]
    # the union of the three DSMs covers about 80 % of the output's bounding box
    assert valid.mean() > 0.5, valid.mean()
    assert 60 < float(values[valid].mean()) < 140


@pytest.mark.timeout(4 * RUN_TIMEOUT_S)
def test_cars_modes_agree(merged):
    """The oracle: CARS's own modes write the same DSM (once the CRS is repaired)."""
    sequential = merged("cars-sequential")
    assert_not_empty(sequential)
    assert_same_dsm(merged("cars-multiprocessing"), sequential)


@pytest.mark.timeout(4 * RUN_TIMEOUT_S)
@pytest.mark.parametrize("oracle", ["cars-sequential", "cars-multiprocessing"])
@pytest.mark.parametrize(
    "mode", ["orchestrix-multiprocessing", "orchestrix-sequential", "orchestrix-local_dask"]
)
def test_orchestrix_mode_writes_the_oracles_dsm(mode, oracle, merged):
    dsm = merged(mode)
    assert_not_empty(dsm)
    assert_same_dsm(dsm, merged(oracle))
