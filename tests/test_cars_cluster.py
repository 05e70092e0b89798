"""CARS's cluster API on the orchestrix mode, through CARS's own classes (skipped without CARS).

What CARS's Orchestrator does with a cluster, step by step: build it from its configuration
section (``AbstractCluster(conf, out_dir, log_dir, launch_worker)``), wrap functions with
``create_task`` (through its profiling wrapper), start the delayed objects and iterate the results
in completion order. Every backend, with CARS's own sequential cluster as the oracle.
"""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest

pytest.importorskip("cars")

from cars.orchestrator.cluster.abstract_cluster import AbstractCluster

import cars_contract_tasks as tasks
import orchestrix as ox
from conftest import BACKENDS
from deadline import within
from orchestrix.cars import OrchestrixCluster
from orchestrix.journal.status import read_status

#: orchestrix's backends under CARS: the modes of conftest's BACKENDS (one start method of mp)
CARS_BACKENDS = {
    name: {"mode": "orchestrix", "backend": opts.pop("mode"), **opts}
    for name, opts in ((n, dict(o)) for n, o in BACKENDS.items())
    if name in ("sequential", "mp-forkserver", "local_dask", "slurm_dask", "pbs_dask")
}


#: the local ones: the contract's other tests (batch jobs cost CI minutes, not coverage)
LOCAL = [name for name in CARS_BACKENDS if name in ("sequential", "mp-forkserver", "local_dask")]


@pytest.fixture(params=LOCAL)
def conf(request):
    return dict(CARS_BACKENDS[request.param])


@pytest.fixture(params=list(CARS_BACKENDS))
def any_conf(request, tmp_path, monkeypatch):
    if CARS_BACKENDS[request.param]["backend"] == "pbs_dask":
        monkeypatch.chdir(tmp_path)  # Debian's qsub wrapper writes job output here
    return dict(CARS_BACKENDS[request.param])


def _cluster(conf, tmp_path, **kwargs):
    return AbstractCluster(conf, str(tmp_path / "out"), str(tmp_path / "logs"), **kwargs)


def _run(cluster, delayeds):
    return list(cluster.future_iterator(cluster.start_tasks(delayeds), timeout=600))


def _two_output_chain(cluster):
    split = cluster.create_task(tasks.split, nout=2)
    combine = cluster.create_task(tasks.combine)
    delayeds = []
    for value in range(6):
        first, second = split(value)
        delayeds.append(combine(first, second, {"more": [first, 1]}))  # delayed nested in a dict
    return delayeds


def _oracle(tmp_path, build):
    cluster = AbstractCluster({"mode": "sequential"}, str(tmp_path / "seq"), str(tmp_path / "sl"))
    try:
        return _run(cluster, build(cluster))
    finally:
        cluster.cleanup()


def test_the_mode_is_registered_by_importing_cars():
    assert AbstractCluster.available_modes["orchestrix"] is OrchestrixCluster


def _run_on(conf, tmp_path, build, **kwargs):
    """``build``'s delayed objects run on a cluster of ``conf``, under a deadline."""

    def run():
        cluster = _cluster(conf, tmp_path, **kwargs)
        assert isinstance(cluster, OrchestrixCluster)
        try:
            return _run(cluster, build(cluster))
        finally:
            cluster.cleanup()

    return within(300, run)


def test_a_two_output_task_feeding_a_chain(any_conf, tmp_path):
    results = _run_on(any_conf, tmp_path, _two_output_chain)
    expected = _oracle(tmp_path, _two_output_chain)
    assert sorted(r["sum"] for r in results) == sorted(r["sum"] for r in expected)
    assert len(results) == 6


def _tiles_then_shift(cluster):
    tile = cluster.create_task(tasks.tile)
    shift = cluster.create_task(tasks.shift)
    return [shift(tile(row, col, 160), 0.5) for row in range(2) for col in range(3)]


@pytest.mark.parametrize("dump_to_disk", [True, False])
def test_xarray_tiles_through_a_chained_stage(conf, tmp_path, dump_to_disk):
    if conf["backend"] == "sequential" and not dump_to_disk:
        pytest.skip("sequential has no dump_to_disk key")
    if conf["backend"] != "sequential":
        conf["dump_to_disk"] = dump_to_disk
    results = {ds.attrs["tile"]: ds for ds in _run_on(conf, tmp_path, _tiles_then_shift)}
    expected = {ds.attrs["tile"]: ds for ds in _oracle(tmp_path, _tiles_then_shift)}
    assert results.keys() == expected.keys()
    for key, dataset in results.items():
        np.testing.assert_array_equal(dataset["hgt"].values, expected[key]["hgt"].values)
        assert dataset.attrs == expected[key].attrs
        dataset["hgt"].values[0, 0] = -1  # a result is the caller's to change in place
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith("orchestrix-dump-")]
    assert leftovers == []


def test_scattered_input_reaches_every_task(conf, tmp_path):
    grid = tasks.tile(3, 4, 300)

    def build(cluster):
        shared = cluster.scatter(grid)
        window_sum = cluster.create_task(tasks.window_sum)
        return [window_sum(shared, row) for row in range(8)]

    results = _run_on(conf, tmp_path, build)
    assert sorted(results) == sorted(float(grid["hgt"].values[row].sum()) for row in range(8))


def test_launch_worker_false_checks_and_sizes_without_workers(tmp_path):
    before = psutil.Process().children(recursive=True)
    cluster = _cluster({"mode": "orchestrix", "nb_workers": "auto"}, tmp_path, launch_worker=False)
    checked = cluster.get_conf()
    assert psutil.Process().children(recursive=True) == before
    assert checked["mode"] == "orchestrix" and checked["backend"] == "multiprocessing"
    assert isinstance(checked["nb_workers"], int) and checked["nb_workers"] >= 1
    assert checked["max_ram_per_worker"] == 2000
    assert cluster.orchestrator is None
    with pytest.raises(RuntimeError, match="launch_worker=False"):
        list(cluster.future_iterator([]))
    cluster.cleanup()
    # CARS feeds the checked section to the next cluster it builds: it is valid input again
    again = _cluster(checked, tmp_path, launch_worker=False)
    assert again.get_conf() == checked


@pytest.mark.parametrize(
    "section",
    [
        {"mode": "orchestrix", "backend": "sequential", "max_ram_per_worker": 500, "profiling": {}},
        {
            "mode": "orchestrix",
            "backend": "multiprocessing",
            "mp_mode": "forkserver",
            "nb_workers": 2,
            "max_ram_per_worker": 1500,
            "task_timeout": 600,
            "max_tasks_per_worker": 10,
            "dump_to_disk": True,
            "per_job_timeout": 600,
            "factorize_tasks": True,
        },
    ],
    ids=["sequential", "multiprocessing"],
)
def test_cars_sections_as_cars_writes_them(section, tmp_path):
    """CARS's own keys of each mode, with its defaults, are accepted; what CARS reads for
    itself (max_ram_per_worker sizes its tiles) is in the checked section in every mode."""
    cluster = _cluster(section, tmp_path, launch_worker=False)
    checked = cluster.get_conf()
    assert checked["max_ram_per_worker"] == section["max_ram_per_worker"]
    assert checked["backend"] == section["backend"]
    assert checked["task_timeout"] == section.get("task_timeout", 600)


def test_a_misspelt_backend_names_the_right_one(tmp_path):
    with pytest.raises(ox.ConfigError, match="did you mean 'local_dask'"):
        _cluster({"mode": "orchestrix", "backend": "local_dusk"}, tmp_path, launch_worker=False)


def test_a_task_error_names_the_task(conf, tmp_path):
    def build(cluster):
        combine = cluster.create_task(tasks.combine)
        return [combine(1, "a", {"more": []})]

    with pytest.raises(ox.TaskError, match="combine") as caught:
        _run_on(conf, tmp_path, build)
    assert isinstance(caught.value, TypeError)


def test_status_shows_every_cluster_of_a_run(tmp_path):
    """A CARS run builds a cluster per step and one more after a reset: one journal holds all."""
    conf = {"mode": "orchestrix", "backend": "sequential"}
    for value in (1, 2):
        cluster = _cluster(conf, tmp_path)
        split = cluster.create_task(tasks.split, nout=2)
        first, _second = split(value)
        assert _run(cluster, [first]) == [value]
        cluster.cleanup()
    status = read_status(str(tmp_path / "logs" / "orchestrix"))
    assert status["counts"]["DONE"] == 2
    assert status["runs"] == 2


def test_sequential_leaves_the_callers_loggers_as_they_were(tmp_path):
    import logging

    before = {name: list(logging.getLogger(name).handlers) for name in ("", "cars", "CARS")}
    cluster = _cluster({"mode": "orchestrix", "backend": "sequential"}, tmp_path)
    try:
        split = cluster.create_task(tasks.split, nout=2)
        _run(cluster, [split(value)[0] for value in range(3)])
    finally:
        cluster.cleanup()
    after = {name: list(logging.getLogger(name).handlers) for name in before}
    assert after == before


def test_worker_logs_and_profiles_of_a_cars_run(tmp_path):
    """CARS's ``profiling`` section with orchestrix's keys: each worker writes its cProfile and
    its log once, under the run's orchestrix directory."""
    conf = {
        "mode": "orchestrix",
        "backend": "multiprocessing",
        "nb_workers": 2,
        "profiling": {"mode": "cprofile"},
    }
    results = _run_on(conf, tmp_path, _two_output_chain)
    assert len(results) == 6
    out = tmp_path / "logs" / "orchestrix"
    assert list((out / "profiling" / "cprofile").glob("*.prof"))
    logs = list((out / "workers_log").glob("*.log"))
    assert logs and all(log.read_text().count("worker started") <= 1 for log in logs)


def test_scattered_inputs_survive_cars_reset(conf, tmp_path):
    """CARS's reset: the cluster is cleaned up keeping its shared data, a new one is built with
    the old one's ``data_to_propagate``, and the same delayed tiles (holding the old cluster's
    scattered handles) are started on it."""
    grid = tasks.tile(1, 2, 300)

    def reset_and_retry():
        first = _cluster(conf, tmp_path)
        shared = first.scatter(grid)
        window_sum = first.create_task(tasks.window_sum)
        delayeds = [window_sum(shared, row) for row in range(4)]
        first.cleanup(keep_shared_dir=True)
        second = AbstractCluster(
            conf, str(tmp_path / "out"), str(tmp_path / "logs"),
            data_to_propagate=first.data_to_propagate,
        )  # fmt: skip
        try:
            return _run(second, delayeds)
        finally:
            second.cleanup()

    results = within(300, reset_and_retry)
    assert sorted(results) == sorted(float(grid["hgt"].values[row].sum()) for row in range(4))
