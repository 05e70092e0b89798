"""CARS's merging pipeline through the ``cars`` command line: CARS's own orchestrator modes
against orchestrix's mode, 2 workers each.

The input: 4 overlapping synthetic DSMs of 1000 x 1000 pixels (1 m, EPSG:32631, float32, with
weights; tests/cars_tasks.py writes them), merged by the ``weighted_fusion`` application in
300 m tiles: 6 x 5 = 30 tiles over the 1600 x 1450 m union. Each engine is a ``cars config.json``
subprocess, rounds alternated; its wall time is the whole process (CARS's import, the
configuration checks, the workers' start, the merge, the summary CARS writes).

* ``cars-multiprocessing``: CARS's default mode (``"mode": "multiprocessing"``).
* ``orchestrix-multiprocessing``: ``{"mode": "orchestrix", "backend": "multiprocessing"}``.
* ``orchestrix-local_dask``: ``{"mode": "orchestrix", "backend": "local_dask"}``.
* ``cars-local_dask``: CARS's ``local_dask`` mode.

Every output DSM is checked against the first engine's, exactly. Every run has tests/cars_crs_fix
on its PYTHONPATH: it works around CARS 1.3.0's "EPSG:EPSG:32631" profile of the merged DSM,
without which the in-memory modes write an all-nodata DSM (see tests/test_cars_merging.py).

Prints a markdown table: median wall time and its ratio to CARS's multiprocessing mode.

Run: ``python benchmarks/bench_cars_merging.py [--side 1000] [--count 4] [--tile 300]
[--rounds 3] [--dir DIR] [--engines a,b,...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
ENGINES = {
    "cars-multiprocessing": {"mode": "multiprocessing", "nb_workers": 2},
    "orchestrix-multiprocessing": {"mode": "orchestrix", "backend": "multiprocessing",
                                   "nb_workers": 2},
    "orchestrix-local_dask": {"mode": "orchestrix", "backend": "local_dask", "nb_workers": 2},
    "cars-local_dask": {"mode": "local_dask", "nb_workers": 2},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=1000, help="side of each DSM (pixels)")
    parser.add_argument("--count", type=int, default=4, help="number of DSMs")
    parser.add_argument("--tile", type=int, default=300, help="dsm_merging tile_size (m)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where inputs and outputs go (default: a temp dir)")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cars run")
    args = parser.parse_args()
    engines = [name for name in args.engines.split(",") if name]
    sys.path.insert(0, TESTS)
    import numpy as np
    import rasterio

    import cars_tasks

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        dsms = cars_tasks.write_dsms(
            os.path.join(folder, "inputs"), count=args.count, side=args.side, seed=0
        )
        times: dict[str, list[float]] = {engine: [] for engine in engines}
        failed: dict[str, str] = {}
        reference = None
        tiles = None
        for round_index in range(args.rounds):
            for engine in engines:
                if engine in failed:
                    continue
                out_dir = os.path.join(folder, f"out-{engine}-{round_index}")
                config = cars_tasks.merging_config(dsms, out_dir, dict(ENGINES[engine]), args.tile)
                seconds, error = _run(config, folder, engine, args.timeout)
                if error is not None:
                    failed[engine] = error
                    print(f"{engine}: failed, left out ({error})", file=sys.stderr)
                    continue
                times[engine].append(seconds)
                with rasterio.open(os.path.join(out_dir, "dsm", "dsm.tif")) as source:
                    output = source.read()
                    valid = float((output != source.nodata).mean())
                    if tiles is None:
                        tiles = _tiles(source.width, source.height, args.tile)
                if valid < 0.5:
                    raise SystemExit(f"{engine}: the DSM is {1 - valid:.0%} nodata")
                if reference is None:
                    reference = output
                elif not np.array_equal(output, reference):
                    raise SystemExit(f"{engine}: output differs from {engines[0]}'s")
                print(f"round {round_index + 1}, {engine}: {seconds:.1f} s", file=sys.stderr)
    measured = [engine for engine in engines if times[engine]]
    base_name = "cars-multiprocessing" if times.get("cars-multiprocessing") else measured[0]
    base = statistics.median(times[base_name])
    print(
        f"CARS merging pipeline (weighted_fusion), {args.count} DSMs of {args.side}^2 float32, "
        f"{tiles} tiles of {args.tile} m, 2 workers, `cars` process wall time, median of "
        f"{args.rounds} rounds\n"
    )
    print(f"| engine | wall time | ratio to {base_name} | runs |")
    print("|---|---|---|---|")
    for engine in engines:
        if engine in failed:
            print(f"| {engine} | failed: {failed[engine]} | | |")
            continue
        median = statistics.median(times[engine])
        runs = ", ".join(f"{value:.1f}" for value in times[engine])
        print(f"| {engine} | {median:.1f} s | {median / base:.2f} | {runs} |")


def _tiles(width: int, height: int, tile: int) -> int:
    return -(-width // tile) * -(-height // tile)


def _run(config: dict, folder: str, name: str, timeout: float) -> tuple[float, str | None]:
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w", encoding="utf8") as stream:
        json.dump(config, stream, indent=2)
    env = dict(os.environ)
    paths = [os.path.join(TESTS, "cars_crs_fix"), os.path.join(ROOT, "src"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    script = os.path.join(os.path.dirname(sys.executable), "cars")
    command = [sys.executable, script] if os.path.exists(script) else [sys.executable, "-m",
                                                                       "cars.cars"]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [*command, path, "--logtype", "plain"],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=folder,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return 0.0, f"no end within {timeout:.0f} s"
    seconds = time.perf_counter() - started
    log = done.stdout + done.stderr
    if done.returncode != 0:
        last = [line for line in log.splitlines() if line.strip()][-1:] or ["?"]
        return seconds, f"exit code {done.returncode}: {last[0][-200:]}"
    if "Tile not saved" in log:
        return seconds, "tiles not saved"
    return seconds, None


if __name__ == "__main__":
    main()
