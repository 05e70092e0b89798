"""map_tiles against dask.array's map_overlap: a 3x3 mean filter over a 1 GiB raster.

The raster (16384 x 16384 float32, 1 GiB) is a .npy file; the output is another .npy file of the
same size. Each engine runs in its own process, 2 workers, rounds interleaved:

* ``orchestrix``: ``orch.map_tiles(smooth, path, 2048, margin=1, out=ox.ArraySink(...))`` on
  multiprocessing: each task reads its grown window from the file and writes its tile into the
  output file.
* ``dask-threads``: ``da.from_array(memmap, chunks=2048).map_overlap(smooth, depth=1,
  boundary="none")`` stored with ``da.store`` into the output file (each block opens it as a
  memory map where it is written), dask's threaded scheduler (2 threads: numpy releases the GIL
  in its loops).
* ``dask-processes``: the same on a ``distributed.LocalCluster`` of 2 worker processes.

Every output is checked against the first engine's, exactly. Prints a markdown table: median wall
time, ratio to orchestrix, and the peak resident memory of the whole process tree (sampled).

Run: ``python benchmarks/bench_tiles.py [--side 16384] [--tile 2048] [--rounds 3] [--dir DIR]``.
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

CHILD = r"""
import json, sys, time, threading
import numpy as np
import psutil

engine, source, target, tile = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def smooth(window):
    padded = np.pad(window, 1, mode="edge")
    rows, cols = window.shape
    total = np.zeros(window.shape, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            total += padded[i : i + rows, j : j + cols]
    return total / np.float32(9)

peak = [0]
done = threading.Event()
def sample():
    me = psutil.Process()
    while not done.wait(0.05):
        try:
            rss = me.memory_info().rss + sum(
                c.memory_info().rss for c in me.children(recursive=True))
        except psutil.Error:
            continue
        peak[0] = max(peak[0], rss)
threading.Thread(target=sample, daemon=True).start()

shape = np.load(source, mmap_mode="r").shape
start = time.perf_counter()
if engine == "orchestrix":
    import orchestrix as ox
    with ox.Orchestrator(mode="multiprocessing", nb_workers=2, progress=False) as orch:
        sink = ox.ArraySink(target, shape, np.float32)
        orch.map_tiles(smooth, source, tile, margin=1, out=sink)
else:
    import dask
    import dask.array as da
    data = da.from_array(np.load(source, mmap_mode="r"), chunks=tile)
    result = data.map_overlap(smooth, depth=1, boundary="none", dtype=np.float32)
    np.lib.format.open_memmap(target, "w+", np.float32, shape).flush()

    class NpyTarget:  # opened where the block is written: a worker process writes the file
        def __init__(self, path):
            self.path = path
        def __setitem__(self, region, block):
            out = np.load(self.path, mmap_mode="r+")
            out[region] = block
            out.flush()

    if engine == "dask-threads":
        with dask.config.set(scheduler="threads", num_workers=2):
            da.store(result, NpyTarget(target), lock=False)
    else:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster):
            da.store(result, NpyTarget(target), lock=False)
seconds = time.perf_counter() - start
done.set()
print(json.dumps({"seconds": seconds, "peak_mb": peak[0] / 2**20}))
"""

ENGINES = ("orchestrix", "dask-threads", "dask-processes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=16384, help="raster side (float32)")
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where the raster and outputs go (default: a temp dir)")
    args = parser.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        source = os.path.join(folder, "raster.npy")
        raster = np.lib.format.open_memmap(source, "w+", np.float32, (args.side, args.side))
        rng = np.random.default_rng(0)
        for row in range(0, args.side, 1024):
            raster[row : row + 1024] = rng.random((min(1024, args.side - row), args.side))
        raster.flush()
        del raster
        times: dict[str, list[float]] = {engine: [] for engine in ENGINES}
        peaks: dict[str, list[float]] = {engine: [] for engine in ENGINES}
        reference = None
        for _ in range(args.rounds):
            for engine in ENGINES:
                target = os.path.join(folder, f"out-{engine}.npy")
                measured = _run(engine, source, target, args.tile)
                times[engine].append(measured["seconds"])
                peaks[engine].append(measured["peak_mb"])
                output = np.load(target, mmap_mode="r")
                if reference is None:
                    reference = np.array(output)
                elif not np.array_equal(output, reference):
                    raise SystemExit(f"{engine}: output differs from {ENGINES[0]}'s")
                del output
                os.remove(target)
    size_gib = args.side**2 * 4 / 2**30
    base = statistics.median(times[ENGINES[0]])
    print(
        f"3x3 mean filter, {size_gib:.2f} GiB float32 raster ({args.side}^2), tiles of "
        f"{args.tile}^2 with a 1-pixel margin, 2 workers, median of {args.rounds} rounds\n"
    )
    print("| engine | wall time | ratio to orchestrix | peak RSS of the process tree |")
    print("|---|---|---|---|")
    for engine in ENGINES:
        median = statistics.median(times[engine])
        peak = max(peaks[engine])
        print(f"| {engine} | {median:.2f} s | {median / base:.2f} | {peak:,.0f} MB |")


def _run(engine: str, source: str, target: str, tile: int) -> dict[str, float]:
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-c", CHILD, engine, source, target, str(tile)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    measured = dict(json.loads(output.splitlines()[-1]))
    measured["process_seconds"] = time.perf_counter() - started
    return measured


if __name__ == "__main__":
    main()
