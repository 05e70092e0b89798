"""Local engines side by side: orchestrix's ``multiprocessing`` mode and its peers, 2 workers each.

Engines (``--engines``): ``orchestrix`` (``Orchestrator(mode="multiprocessing", nb_workers=2)``),
``serial`` (the tasks called in the caller: the baseline, never a "peer"), ``pool``
(``multiprocessing.Pool``), ``executor`` (``concurrent.futures.ProcessPoolExecutor``), ``joblib``
(loky backend, ``n_jobs=2``), ``dask`` (the ``processes`` scheduler on a 2-worker pool),
``distributed`` (``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``) and ``ray``
(``ray.init(num_cpus=2)``, when ``import ray`` works). Every engine whose workers have a start
method uses ``--start-method`` (forkserver by default): Pool, ProcessPoolExecutor, the dask
scheduler's pool, distributed's workers and orchestrix; loky and Ray start workers their own way.

Workloads (``--workloads``), sizes of the default run (``--quick`` gives a smoke-test run):

* ``noop``: 2,000 tasks returning their argument, submitted one task each (``submit`` per task,
  ``apply_async``, ``delayed`` per task, ``client.submit``, ``dask.delayed`` computed together,
  ``ray.remote``). Metric: tasks/s.
* ``cpu``: 40 pure-Python tasks of ~100 ms each (the loop count is calibrated once at start).
  Metric: parallel efficiency = serial wall / (2 x wall); the serial wall is the ``serial``
  engine's median, or the calibrated time x the task count when ``serial`` is not run.
* ``tiles``: 64 tasks, each making a 2048 x 2048 float32 tile (16 MiB) from a seed; the caller
  writes each tile into one output ``.npy`` (``np.lib.format.open_memmap``, 64 slots) as it
  completes (orchestrix ``as_completed``, ``imap_unordered``, ``concurrent.futures.as_completed``,
  joblib ``return_as="generator_unordered"``, ``distributed.as_completed``, ``ray.wait``; the dask
  scheduler has no such iterator: a ``posttask`` callback writes each tile as it lands in the
  caller). Metrics: wall, and the caller's peak RSS during the run minus its RSS just before it
  (psutil, sampled every 10 ms in a background thread). The writer drops each written slot's
  pages from the caller's mapping (``madvise(MADV_DONTNEED)``, the data stays in the page cache),
  so the output file does not count as caller memory: what remains is what the engine makes the
  caller hold.
* ``chain``: 32 independent chains make tile -> scale -> sqrt -> sum, each step its own task
  (orchestrix and dask: a task graph; distributed and Ray: chained futures / object refs; Pool,
  ProcessPoolExecutor and joblib: stage by stage, each stage's results back in the caller).
  Metric: wall.

Every run measures the start-up apart: creating the pool / cluster / orchestrator and getting the
result of one trivial task (so lazily started pools are up before the clock of the workload
starts). For orchestrix this is the time from ``Orchestrator()`` to a first result. Each
(workload, engine) run happens in a fresh child process (``--timeout`` each), which creates and
closes its engine; results are checked against references computed in the parent. Runs are
interleaved: each repeat goes over the workloads, and over the engines in a rotated order within
each workload. Tables report medians over ``--repeat`` runs.

Run: ``python benchmarks/bench_local.py [--quick] [--markdown-out PATH]`` or ``tox -e bench``
(about 6 minutes on 2 cores). The tiles output (1 GiB) goes to the system temp dir; ``--tmp-dir
/dev/shm`` keeps disk write-back out of the tiles timings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import mmap
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

NB_WORKERS = 2
TILE_SHAPE = (2048, 2048)
CPU_TASK_SECONDS = 0.1
WORKLOADS = ("noop", "cpu", "tiles", "chain")
SIZES = {"noop": 2000, "cpu": 40, "tiles": 64, "chain": 32}
QUICK_SIZES = {"noop": 200, "cpu": 8, "tiles": 8, "chain": 4}
TILE_SEED0 = 1_000
CHAIN_SEED0 = 5_000
ENGINES = ("orchestrix", "serial", "pool", "executor", "joblib", "dask", "distributed", "ray")
LABELS = {
    "orchestrix": "orchestrix multiprocessing",
    "serial": "serial (in the caller)",
    "pool": "multiprocessing.Pool",
    "executor": "ProcessPoolExecutor",
    "joblib": "joblib (loky)",
    "dask": "dask processes scheduler",
    "distributed": "distributed LocalCluster",
    "ray": "Ray",
}
NOT_PEERS = ("orchestrix", "serial")


# -- the tasks (module level, so that every engine can pickle them) ------------------------------


def noop(x: Any) -> Any:
    return x


def spin(loops: int) -> int:
    """Pure-Python CPU work (holds the GIL)."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc


def make_tile(seed: int) -> np.ndarray:
    tile = np.random.default_rng(seed).random(TILE_SHAPE, dtype=np.float32)
    tile *= np.float32(2.0)
    tile += np.float32(1.0)
    return tile


def make_tile_indexed(item: tuple[int, int]) -> tuple[int, np.ndarray]:
    index, seed = item
    return index, make_tile(seed)


def scale(tile: np.ndarray) -> np.ndarray:
    return tile * np.float32(0.5) + np.float32(0.25)


def root(tile: np.ndarray) -> np.ndarray:
    return np.sqrt(tile)


def total(tile: np.ndarray) -> float:
    return float(tile.sum(dtype=np.float64))


def chain_serial(seed: int) -> float:
    return total(root(scale(make_tile(seed))))


# -- the engines ---------------------------------------------------------------------------------

Sink = Callable[[int, np.ndarray], None]


class Engine:
    """One way of running the tasks; created, started and closed inside one child process."""

    def start(self, start_method: str) -> None:
        """Create the pool / cluster / orchestrator."""

    def first(self) -> Any:
        """The result of one trivial task (the end of the start-up)."""
        return noop(0)

    def run_many(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        """``[fn(a) for a in args]``, one task each."""
        return [fn(a) for a in args]

    def tiles(self, seeds: Sequence[int], sink: Sink) -> None:
        """``sink(index, make_tile(seeds[index]))`` for each index, as each tile completes."""
        for index, seed in enumerate(seeds):
            sink(index, make_tile(seed))

    def chain(self, seeds: Sequence[int]) -> list[float]:
        """``total(root(scale(make_tile(seed))))`` for each seed, each step its own task."""
        return [total(root(scale(make_tile(seed)))) for seed in seeds]

    def close(self) -> None:
        """Shut the workers down."""


class SerialEngine(Engine):
    pass


class OrchestrixEngine(Engine):
    def start(self, start_method: str) -> None:
        import orchestrix as ox

        self.ox = ox
        self.stack = contextlib.ExitStack()
        self.orch = self.stack.enter_context(
            ox.Orchestrator(mode="multiprocessing", nb_workers=NB_WORKERS, mp_mode=start_method)
        )

    def first(self) -> Any:
        return self.orch.submit(noop, 0).result()

    def run_many(self, fn, args):
        futures = [self.orch.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def tiles(self, seeds, sink):
        task_make = self.ox.task(make_tile)
        for index, tile in self.orch.as_completed([task_make(seed) for seed in seeds]):
            sink(index, tile)
            del tile

    def chain(self, seeds):
        ox = self.ox
        t_make, t_scale, t_root, t_total = map(ox.task, (make_tile, scale, root, total))
        return list(self.orch.compute([t_total(t_root(t_scale(t_make(s)))) for s in seeds]))

    def close(self) -> None:
        self.stack.close()


class PoolEngine(Engine):
    def start(self, start_method: str) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context(start_method).Pool(NB_WORKERS)

    def first(self) -> Any:
        return self.pool.apply(noop, (0,))

    def run_many(self, fn, args):
        pending = [self.pool.apply_async(fn, (a,)) for a in args]
        return [p.get() for p in pending]

    def tiles(self, seeds, sink):
        for index, tile in self.pool.imap_unordered(make_tile_indexed, enumerate(seeds)):
            sink(index, tile)
            del tile

    def chain(self, seeds):
        tiles = self.pool.map(make_tile, seeds)
        tiles = self.pool.map(scale, tiles)
        tiles = self.pool.map(root, tiles)
        return self.pool.map(total, tiles)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class ExecutorEngine(Engine):
    def start(self, start_method: str) -> None:
        import concurrent.futures
        import multiprocessing

        self.cf = concurrent.futures
        self.executor = concurrent.futures.ProcessPoolExecutor(
            NB_WORKERS, mp_context=multiprocessing.get_context(start_method)
        )

    def first(self) -> Any:
        return self.executor.submit(noop, 0).result()

    def run_many(self, fn, args):
        futures = [self.executor.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def tiles(self, seeds, sink):
        index_of = {self.executor.submit(make_tile, seed): i for i, seed in enumerate(seeds)}
        for future in self.cf.as_completed(list(index_of)):
            sink(index_of.pop(future), future.result())
            del future

    def chain(self, seeds):
        tiles = list(self.executor.map(make_tile, seeds))
        tiles = list(self.executor.map(scale, tiles))
        tiles = list(self.executor.map(root, tiles))
        return list(self.executor.map(total, tiles))

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class JoblibEngine(Engine):
    def start(self, start_method: str) -> None:
        import joblib

        self.joblib = joblib

    def parallel(self, calls: Iterable[Any], **options: Any) -> Any:
        return self.joblib.Parallel(n_jobs=NB_WORKERS, backend="loky", **options)(calls)

    def first(self) -> Any:
        return self.parallel([self.joblib.delayed(noop)(0)])[0]

    def run_many(self, fn, args):
        return self.parallel(self.joblib.delayed(fn)(a) for a in args)

    def tiles(self, seeds, sink):
        delayed = self.joblib.delayed(make_tile_indexed)
        calls = (delayed((i, seed)) for i, seed in enumerate(seeds))
        for index, tile in self.parallel(calls, return_as="generator_unordered"):
            sink(index, tile)
            del tile

    def chain(self, seeds):
        delayed = self.joblib.delayed
        tiles = self.parallel(delayed(make_tile)(s) for s in seeds)
        tiles = self.parallel(delayed(scale)(t) for t in tiles)
        tiles = self.parallel(delayed(root)(t) for t in tiles)
        return self.parallel(delayed(total)(t) for t in tiles)

    def close(self) -> None:
        # loky keeps one reusable executor per process; shut it down here, like the other pools
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True)


class DaskEngine(Engine):
    """The ``processes`` scheduler on an explicit 2-worker pool, so that creating the pool is
    start-up and not part of each ``dask.compute`` (which would otherwise make a new pool)."""

    def start(self, start_method: str) -> None:
        import concurrent.futures
        import multiprocessing

        import dask

        self.dask = dask
        self.pool = concurrent.futures.ProcessPoolExecutor(
            NB_WORKERS, mp_context=multiprocessing.get_context(start_method)
        )

    def compute(self, *collections: Any, **options: Any) -> tuple[Any, ...]:
        return self.dask.compute(
            *collections, scheduler="processes", num_workers=NB_WORKERS, pool=self.pool, **options
        )

    def first(self) -> Any:
        return self.compute(self.dask.delayed(noop)(0))[0]

    def run_many(self, fn, args):
        delayed = self.dask.delayed(fn)
        return list(self.compute(*[delayed(a) for a in args]))

    def tiles(self, seeds, sink):
        from dask.callbacks import Callback

        delayed = self.dask.delayed(make_tile)
        tasks = [delayed(seed, dask_key_name=f"tile-{i}") for i, seed in enumerate(seeds)]
        index_of = {task.key: i for i, task in enumerate(tasks)}

        def posttask(key, result, dsk, state, worker_id):
            if key in index_of:
                sink(index_of[key], result)

        with Callback(posttask=posttask):
            results = self.compute(*tasks)
        del results

    def chain(self, seeds):
        d_make, d_scale, d_root, d_total = map(self.dask.delayed, (make_tile, scale, root, total))
        return list(self.compute(*[d_total(d_root(d_scale(d_make(s)))) for s in seeds]))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class DistributedEngine(Engine):
    def start(self, start_method: str) -> None:
        import logging

        import dask
        import distributed

        self.distributed = distributed
        dask.config.set({"distributed.worker.multiprocessing-method": start_method})
        self.cluster = distributed.LocalCluster(
            n_workers=NB_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = distributed.Client(self.cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def first(self) -> Any:
        return self.submit(noop, 0).result()

    def run_many(self, fn, args):
        return self.client.gather([self.submit(fn, a) for a in args])

    def tiles(self, seeds, sink):
        futures = [self.submit(make_tile, seed) for seed in seeds]
        index_of = {future.key: i for i, future in enumerate(futures)}
        completed = self.distributed.as_completed(futures, with_results=True)
        del futures
        for future, tile in completed:
            sink(index_of[future.key], tile)
            future.release()
            del future, tile

    def chain(self, seeds):
        ends = []
        for seed in seeds:
            future = self.submit(make_tile, seed)
            for fn in (scale, root, total):
                future = self.submit(fn, future)
            ends.append(future)
        return self.client.gather(ends)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class RayEngine(Engine):
    def start(self, start_method: str) -> None:
        import logging

        import ray

        self.ray = ray
        ray.init(
            num_cpus=NB_WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
        self.remote: dict[Callable[..., Any], Any] = {}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(fn)
        return self.remote[fn].remote(*args)

    def first(self) -> Any:
        return self.ray.get(self.call(noop, 0))

    def run_many(self, fn, args):
        return self.ray.get([self.call(fn, a) for a in args])

    def tiles(self, seeds, sink):
        index_of = {self.call(make_tile, seed): i for i, seed in enumerate(seeds)}
        pending = list(index_of)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            for ref in done:
                sink(index_of.pop(ref), self.ray.get(ref))
            del done

    def chain(self, seeds):
        ends = []
        for seed in seeds:
            ref = self.call(make_tile, seed)
            for fn in (scale, root, total):
                ref = self.call(fn, ref)
            ends.append(ref)
        return self.ray.get(ends)

    def close(self) -> None:
        self.ray.shutdown()


ENGINE_CLASSES: dict[str, type[Engine]] = {
    "orchestrix": OrchestrixEngine,
    "serial": SerialEngine,
    "pool": PoolEngine,
    "executor": ExecutorEngine,
    "joblib": JoblibEngine,
    "dask": DaskEngine,
    "distributed": DistributedEngine,
    "ray": RayEngine,
}


# -- measuring in the child ----------------------------------------------------------------------


class PeakRss:
    """The caller's peak RSS over a block, minus its RSS at the start (MiB), sampled by a thread.

    ``anon`` is the same for RSS minus its file-backed and shared part (psutil's ``shared``).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_loop, daemon=True)

    def _sample(self) -> None:
        info = self.process.memory_info()
        self.peak = max(self.peak, info.rss)
        self.peak_anon = max(self.peak_anon, info.rss - getattr(info, "shared", 0))

    def _sample_loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRss:
        info = self.process.memory_info()
        self.base, self.base_anon = info.rss, info.rss - getattr(info, "shared", 0)
        self.peak, self.peak_anon = self.base, self.base_anon
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()
        self.mb = (self.peak - self.base) / 2**20
        self.anon_mb = (self.peak_anon - self.base_anon) / 2**20


class TileWriter:
    """Writes tiles into the slots of one ``.npy`` memmap, keeping written pages out of the RSS."""

    def __init__(self, path: Path, count: int) -> None:
        self.out = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(count, *TILE_SHAPE)
        )
        self.slot_bytes = self.out[0].nbytes
        # numpy maps the file from the header offset rounded down to the allocation granularity
        self.data_start = self.out.offset % mmap.ALLOCATIONGRANULARITY
        self.written = np.zeros(count, dtype=bool)

    def __call__(self, index: int, tile: np.ndarray) -> None:
        if self.written[index]:
            raise RuntimeError(f"tile {index} delivered twice")
        self.out[index] = tile
        self.written[index] = True
        start = self.data_start + index * self.slot_bytes
        aligned = start - start % mmap.PAGESIZE
        # dirty pages of a shared file mapping stay in the page cache; this only unmaps them
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self.out._mmap.madvise(mmap.MADV_DONTNEED, aligned, start + self.slot_bytes - aligned)

    def check(self, expected_sums: Sequence[float]) -> None:
        if not self.written.all():
            raise RuntimeError(f"tiles never delivered: {np.flatnonzero(~self.written).tolist()}")
        for index, expected in enumerate(expected_sums):
            got = float(self.out[index].sum(dtype=np.float64))
            if not np.isclose(got, expected, rtol=1e-9):
                raise RuntimeError(f"tile {index}: sum {got!r}, expected {expected!r}")


def run_workload(engine: Engine, spec: dict[str, Any]) -> dict[str, Any]:
    """Run the timed part of one workload on a started engine; checks the results after."""
    workload, count = spec["workload"], spec["count"]
    result: dict[str, Any] = {}
    if workload == "noop":
        args = list(range(count))
        start = time.perf_counter()
        values = engine.run_many(noop, args)
        result["wall"] = time.perf_counter() - start
        if list(values) != args:
            raise RuntimeError("noop: wrong results")
    elif workload == "cpu":
        start = time.perf_counter()
        values = engine.run_many(spin, [spec["loops"]] * count)
        result["wall"] = time.perf_counter() - start
        if list(values) != [spec["spin_value"]] * count:
            raise RuntimeError("cpu: wrong results")
    elif workload == "tiles":
        path = Path(spec["tmp_dir"]) / f"tiles-{os.getpid()}.npy"
        try:
            writer = TileWriter(path, count)
            seeds = [TILE_SEED0 + i for i in range(count)]
            with PeakRss() as rss:
                start = time.perf_counter()
                engine.tiles(seeds, writer)
                result["wall"] = time.perf_counter() - start
            result["rss_mb"], result["anon_mb"] = rss.mb, rss.anon_mb
            writer.check(spec["tile_sums"])
            del writer
        finally:
            path.unlink(missing_ok=True)
    elif workload == "chain":
        seeds = [CHAIN_SEED0 + i for i in range(count)]
        with PeakRss() as rss:
            start = time.perf_counter()
            values = engine.chain(seeds)
            result["wall"] = time.perf_counter() - start
        result["rss_mb"], result["anon_mb"] = rss.mb, rss.anon_mb
        if not np.allclose(values, spec["chain_totals"], rtol=1e-9):
            raise RuntimeError("chain: wrong results")
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return result


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {}
    try:
        engine = ENGINE_CLASSES[spec["engine"]]()
        start = time.perf_counter()
        engine.start(spec["start_method"])
        if engine.first() != 0:
            raise RuntimeError("first task: wrong result")
        result["startup"] = time.perf_counter() - start
        try:
            result.update(run_workload(engine, spec))
        finally:
            start = time.perf_counter()
            engine.close()
            result["close"] = time.perf_counter() - start
    except BaseException as error:  # noqa: BLE001 -- any failure is reported, the run goes on
        result["error"] = f"{type(error).__name__}: {error}".strip()
        result["traceback"] = traceback.format_exc()
    Path(spec["result_path"]).write_text(json.dumps(result))


# -- the parent: set-up, scheduling, report ------------------------------------------------------


def calibrate_spin(target: float) -> tuple[int, float]:
    """A loop count for which ``spin`` takes about ``target`` s here, and its measured time."""

    def timed(loops: int) -> float:
        start = time.perf_counter()
        spin(loops)
        return time.perf_counter() - start

    loops = 10_000
    while (elapsed := timed(loops)) < 0.02:
        loops *= 4
    for _ in range(2):
        loops = max(1, round(loops * target / elapsed))
        elapsed = statistics.median(timed(loops) for _ in range(3))
    return loops, elapsed


def machine_lines() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = []
    for name in ("numpy", "dask", "distributed", "joblib", "ray", "orchestrix", "psutil"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return [
        f"- machine: {os.cpu_count()} CPUs ({usable} usable, "
        f"{psutil.cpu_count(logical=False)} physical cores), {model}, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.platform()}",
        f"- versions: Python {platform.python_version()}, " + ", ".join(versions),
    ]


def ray_status() -> str | None:
    """None when ``import ray`` works, else why not."""
    try:
        import ray  # noqa: F401
    except Exception as error:  # noqa: BLE001 -- any import failure means "no Ray"
        return f"{type(error).__name__}: {error}"
    return None


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_child(spec: dict[str, Any], timeout: float, work_dir: Path) -> dict[str, Any]:
    """One (workload, engine) run in a fresh process; its process group is killed on timeout."""
    tag = f"{spec['workload']}-{spec['engine']}-{spec['repeat']}"
    spec_path, result_path = work_dir / f"{tag}.json", work_dir / f"{tag}.result.json"
    log_path = work_dir / f"{tag}.log"
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return {"error": f"timed out after {timeout:g} s", "timed_out": True}
        except BaseException:  # Ctrl-C: the child runs in its own session, so stop it too
            kill_group(process)
            raise
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = {"error": f"child process exited with status {process.returncode}"}
    if "error" in result:
        # the end of the child's traceback, or of its output when it died without one
        text = result.get("traceback") or log_path.read_text(errors="replace")
        result["log_tail"] = text.strip().splitlines()[-8:]
    return result


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "n/a" if ours is None or theirs is None or theirs == 0 else f"{ours / theirs:.2f}"


class Results:
    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.errors: dict[tuple[str, str], str] = {}

    def add(self, workload: str, engine: str, result: dict[str, Any]) -> None:
        self.runs.setdefault((workload, engine), []).append(result)

    def median(self, workload: str, engine: str, metric: Callable[[dict], float]) -> float | None:
        values = [metric(r) for r in self.runs.get((workload, engine), [])]
        return statistics.median(values) if values else None


def report(
    results: Results,
    workloads: Sequence[str],
    engines: Sequence[str],
    sizes: dict[str, int],
    serial_cpu_estimate: float,
) -> list[str]:
    lines: list[str] = []
    ox = "orchestrix"
    peers = [e for e in engines if e not in NOT_PEERS]

    def best_peer(workload: str, metric: Callable[[dict], float], high: bool):
        best = None
        for engine in peers:
            value = results.median(workload, engine, metric)
            if value is not None and (
                best is None or (value > best[1] if high else value < best[1])
            ):
                best = (engine, value)
        return best

    def wall(r: dict) -> float:
        return r["wall"]

    def startup(r: dict) -> float:
        return r["startup"]

    def total_time(r: dict) -> float:
        return r["startup"] + r["wall"]

    def rss(r: dict) -> float:
        return r["rss_mb"]

    def anon(r: dict) -> float:
        return r["anon_mb"]

    def note(workload: str, engine: str) -> str:
        runs = len(results.runs.get((workload, engine), []))
        error = results.errors.get((workload, engine))
        if error and not runs:
            return f"failed: {error}"
        return f"{runs} runs" + (f"; a run failed: {error}" if error else "")

    serial_cpu = results.median("cpu", "serial", wall)
    if serial_cpu is None:
        serial_cpu = serial_cpu_estimate

    def efficiency(r: dict) -> float:
        return serial_cpu / (NB_WORKERS * r["wall"])

    def tasks_per_s(count: int) -> Callable[[dict], float]:
        return lambda r: count / r["wall"]

    for workload in workloads:
        count = sizes[workload]
        if workload == "noop":
            lines += [
                f"### noop: {count:,} tasks returning their argument, one submission each",
                "",
                "| engine | tasks/s | wall s | start-up s | orchestrix / engine (tasks/s) | runs |",
                "|---|---:|---:|---:|---:|---|",
            ]
            metric = tasks_per_s(count)
            ours = results.median(workload, ox, metric)
            for engine in engines:
                value = results.median(workload, engine, metric)
                lines.append(
                    f"| {LABELS[engine]} | {fmt(value, 0)} | "
                    f"{fmt(results.median(workload, engine, wall))} | "
                    f"{fmt(results.median(workload, engine, startup))} | "
                    f"{ratio(ours, value)} | {note(workload, engine)} |"
                )
        elif workload == "cpu":
            lines += [
                f"### cpu: {count} pure-Python tasks of ~{CPU_TASK_SECONDS * 1e3:.0f} ms",
                "",
                f"Serial wall {serial_cpu:.3f} s "
                + ("(serial engine, median)." if "serial" in engines else "(calibrated estimate)."),
                "",
                "| engine | efficiency | wall s | start-up s | orchestrix / engine (efficiency)"
                " | runs |",
                "|---|---:|---:|---:|---:|---|",
            ]
            ours = results.median(workload, ox, efficiency)
            for engine in engines:
                value = results.median(workload, engine, efficiency)
                lines.append(
                    f"| {LABELS[engine]} | {fmt(value)} | "
                    f"{fmt(results.median(workload, engine, wall))} | "
                    f"{fmt(results.median(workload, engine, startup))} | "
                    f"{ratio(ours, value)} | {note(workload, engine)} |"
                )
        else:
            if workload == "tiles":
                title = (
                    f"### tiles: {count} tiles of {TILE_SHAPE[0]}x{TILE_SHAPE[1]} float32 "
                    f"(16 MiB) written into one .npy as they complete"
                )
            else:
                title = f"### chain: {count} chains make -> scale -> sqrt -> sum, a task per step"
            lines += [
                title,
                "",
                "| engine | wall s | start-up s | start-up + wall s | caller peak RSS MB "
                "| (anonymous MB) | orchestrix / engine (wall) | orchestrix / engine "
                "(start-up + wall) | runs |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            ours_wall = results.median(workload, ox, wall)
            ours_total = results.median(workload, ox, total_time)
            for engine in engines:
                value_wall = results.median(workload, engine, wall)
                value_total = results.median(workload, engine, total_time)
                lines.append(
                    f"| {LABELS[engine]} | {fmt(value_wall)} | "
                    f"{fmt(results.median(workload, engine, startup))} | {fmt(value_total)} | "
                    f"{fmt(results.median(workload, engine, rss), 0)} | "
                    f"{fmt(results.median(workload, engine, anon), 0)} | "
                    f"{ratio(ours_wall, value_wall)} | {ratio(ours_total, value_total)} | "
                    f"{note(workload, engine)} |"
                )
        lines.append("")

    # start-up over every run of each engine
    lines += [
        "### start-up: engine created to the first result of a trivial task (all runs)",
        "",
        "| engine | median s | min s | max s | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    startups: dict[str, list[float]] = {}
    for engine in engines:
        values = [r["startup"] for w in workloads for r in results.runs.get((w, engine), [])]
        startups[engine] = values
        if values:
            lines.append(
                f"| {LABELS[engine]} | {statistics.median(values):.3f} | {min(values):.3f} | "
                f"{max(values):.3f} | {len(values)} |"
            )
        else:
            lines.append(f"| {LABELS[engine]} | n/a | n/a | n/a | 0 |")
    lines.append("")

    # targets
    lines += ["### targets (best peer: best of the engines other than orchestrix and serial)", ""]

    def target(name: str, ok: bool | None, detail: str) -> None:
        mark = "not measured" if ok is None else ("met" if ok else "missed")
        lines.append(f"- {name}: **{mark}** ({detail})")

    def against_peer(
        name: str, workload: str, metric: Callable[[dict], float], factor: float, high: bool
    ) -> None:
        if workload not in workloads:
            return
        ours = results.median(workload, ox, metric)
        best = best_peer(workload, metric, high)
        if ours is None or best is None:
            missing = "orchestrix did not run" if ours is None else "no peer ran"
            target(name, None, missing)
            return
        peer, value = best
        ok = ours >= factor * value if high else ours <= factor * value
        unit = "tasks/s" if high else "s"
        target(
            name,
            ok,
            f"orchestrix {number(ours)} {unit}, best peer {LABELS[peer]} {number(value)} {unit}, "
            f"orchestrix / peer {ours / value:.2f}",
        )

    against_peer("noop tasks/s >= 3x best peer", "noop", tasks_per_s(sizes["noop"]), 3.0, True)
    if "cpu" in workloads:
        value = results.median("cpu", ox, efficiency)
        target(
            "cpu efficiency >= 0.9",
            None if value is None else value >= 0.9,
            "orchestrix did not run" if value is None else f"orchestrix {value:.3f}",
        )
    against_peer("tiles wall <= 0.9x best peer", "tiles", wall, 0.9, False)
    if "tiles" in workloads:
        value = results.median("tiles", ox, rss)
        target(
            "tiles caller peak RSS < 300 MB",
            None if value is None else value < 300,
            "orchestrix did not run" if value is None else f"orchestrix {value:.0f} MB",
        )
    against_peer("chain wall <= 0.9x best peer", "chain", wall, 0.9, False)
    against_peer("tiles start-up + wall <= 0.6x best peer", "tiles", total_time, 0.6, False)
    against_peer("chain start-up + wall <= 0.6x best peer", "chain", total_time, 0.6, False)
    if ox in engines:
        values = startups.get(ox, [])
        value = statistics.median(values) if values else None
        target(
            "orchestrix start to first result < 0.5 s",
            None if value is None else value < 0.5,
            "orchestrix did not run" if value is None else f"median {value:.3f} s",
        )
    lines.append("")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=WORKLOADS,
        default=list(WORKLOADS),
        help="workloads to run (default: all)",
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="engines to run (default: all; ray only when `import ray` works)",
    )
    parser.add_argument(
        "--repeat", type=int, help="runs per (workload, engine); default 3, 1 quick"
    )
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "spawn", "fork"),
        default="forkserver",
        help="worker start method, for every engine that has one (default: forkserver)",
    )
    parser.add_argument("--markdown-out", type=Path, help="also write the report to this file")
    parser.add_argument("--quick", action="store_true", help="few tasks, 1 repeat: a smoke test")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per run before it is killed"
    )
    parser.add_argument(
        "--tmp-dir", type=Path, help="where the tiles output file goes (default: system temp dir)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    sizes = QUICK_SIZES if args.quick else SIZES
    repeat = args.repeat or (1 if args.quick else 3)
    workloads = [w for w in WORKLOADS if w in args.workloads]
    engines = [e for e in ENGINES if e in args.engines]

    header = ["## Local engines: orchestrix multiprocessing and its peers", "", *machine_lines()]
    if "ray" in engines:
        why = ray_status()
        if why is not None:
            engines.remove("ray")
            header.append(f"- Ray: skipped, `import ray` failed ({why})")
    header += [
        f"- {NB_WORKERS} workers per engine; start method {args.start_method} (Pool, "
        "ProcessPoolExecutor, dask's pool, distributed workers, orchestrix; loky and Ray start "
        "workers their own way)",
        f"- {repeat} run(s) per (workload, engine), interleaved; medians reported"
        + (" (--quick sizes)" if args.quick else ""),
    ]
    for line in header:
        print(line, flush=True)

    spec_base: dict[str, Any] = {"start_method": args.start_method}
    serial_cpu_estimate = 0.0
    print("\npreparing references...", flush=True)
    if "cpu" in workloads:
        loops, per_call = calibrate_spin(CPU_TASK_SECONDS)
        spec_base["loops"], spec_base["spin_value"] = loops, spin(loops)
        serial_cpu_estimate = per_call * sizes["cpu"]
        header.append(f"- cpu task: spin({loops:,}), {per_call * 1e3:.1f} ms serially here")
        print(header[-1], flush=True)
    if "tiles" in workloads:
        spec_base["tile_sums"] = [total(make_tile(TILE_SEED0 + i)) for i in range(sizes["tiles"])]
    if "chain" in workloads:
        spec_base["chain_totals"] = [chain_serial(CHAIN_SEED0 + i) for i in range(sizes["chain"])]

    results = Results()
    skipped: set[tuple[str, str]] = set()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_local-") as work:
        work_dir = Path(work)
        tmp_dir = args.tmp_dir or work_dir
        for rep in range(repeat):
            for workload in workloads:
                shift = rep % len(engines) if engines else 0
                for engine in engines[shift:] + engines[:shift]:
                    label = f"[{rep + 1}/{repeat}] {workload:<5} {LABELS[engine]:<27}"
                    if (workload, engine) in skipped:
                        print(f"{label} skipped (failed in an earlier repeat)", flush=True)
                        continue
                    spec = {
                        **spec_base,
                        "workload": workload,
                        "engine": engine,
                        "count": sizes[workload],
                        "repeat": rep,
                        "tmp_dir": str(tmp_dir),
                    }
                    result = run_child(spec, args.timeout, work_dir)
                    if "error" in result:
                        results.errors[(workload, engine)] = result["error"].splitlines()[0]
                        skipped.add((workload, engine))
                        print(f"{label} ERROR {result['error']}", flush=True)
                        for line in result.get("log_tail", []):
                            print(f"    | {line}", flush=True)
                        continue
                    results.add(workload, engine, result)
                    extra = ""
                    if "rss_mb" in result:
                        extra = f", caller peak RSS {result['rss_mb']:.0f} MB"
                    print(
                        f"{label} start-up {result['startup']:.3f} s, "
                        f"wall {result['wall']:.3f} s{extra}",
                        flush=True,
                    )
    print(f"\nall runs took {time.perf_counter() - began:.0f} s\n", flush=True)

    lines = [*header, "", *report(results, workloads, engines, sizes, serial_cpu_estimate)]
    text = "\n".join(lines)
    print(text, flush=True)
    if args.markdown_out is not None:
        args.markdown_out.parent.mkdir(parents=True, exist_ok=True)
        args.markdown_out.write_text(text + "\n")
        print(f"report written to {args.markdown_out}")


if __name__ == "__main__":
    main()
