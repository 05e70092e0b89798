"""xarray and pandas objects in results travel like numpy arrays: their large buffers go
through dump files (pickle protocol 5, out of band), the rest through the pipe."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import orchestrix as ox
from dump_tasks import (
    SIDE,
    dataset_total,
    make_dataarray,
    make_dataset,
    make_frame,
    make_series,
    two_datasets,
)
from orchestrix.worker.dumps import Dumped, Dumper
from test_nothing_lost import full_disk  # noqa: F401 - a fixture: dump files see a full disk

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")

POOL = {"mode": "multiprocessing", "nb_workers": 2, "retries": 0}


def _through(dumper: Dumper, value):
    """``value`` as the parent receives it from a worker: the bytes of the pipe, and the value
    with its handles."""
    data = dumper.encode(value, pickle.dumps)
    return data, pickle.loads(data)


@pytest.mark.timeout(120)
def test_xarray_and_pandas_results_are_equal_after_the_trip(tmp_path):
    with ox.Orchestrator(**POOL, dump_dir=str(tmp_path)) as orch:
        ds, da, frame, series = orch.compute(
            [make_dataset(1.5), make_dataarray(2.0), make_frame(3.0), make_series(4.0)]
        )
        oracle = ox.Orchestrator(mode="sequential")
        with oracle:
            expected = oracle.compute(
                [make_dataset(1.5), make_dataarray(2.0), make_frame(3.0), make_series(4.0)]
            )
        xr.testing.assert_identical(ds, expected[0])
        xr.testing.assert_identical(da, expected[1])
        pd.testing.assert_frame_equal(frame, expected[2])
        pd.testing.assert_series_equal(series, expected[3])
        assert ds["a"].values.flags.writeable and not ds["a"].values.flags.owndata  # a map
        assert os.listdir(orch._backend.dump_dir) == []  # the handles are gone: so are the files
        private = orch._backend.dump_dir
    assert not os.path.exists(private)


def test_large_buffers_leave_the_pipe_and_small_ones_stay(tmp_path):
    dumper = Dumper(str(tmp_path))
    dataset = make_dataset.func(1.0)
    data, handle = _through(dumper, dataset)
    assert isinstance(handle, Dumped) and len(os.listdir(tmp_path)) == 1
    assert len(data) < 20_000 < 2 * SIDE * SIDE * 8  # the grids went to the file
    xr.testing.assert_identical(handle.open(), dataset)
    small = make_dataset.func(1.0, side=20)  # 3 kB arrays: stay in band, no file
    data, value = _through(dumper, small)
    assert isinstance(value, xr.Dataset) and len(os.listdir(tmp_path)) == 1
    xr.testing.assert_identical(value, small)
    del handle
    assert os.listdir(tmp_path) == []


def test_object_and_strided_arrays(tmp_path):
    dumper = Dumper(str(tmp_path))
    objects = np.array([str(i) for i in range(50_000)], dtype=object)
    _, value = _through(dumper, objects)
    assert isinstance(value, np.ndarray) and os.listdir(tmp_path) == []  # pickled in band
    assert value.tolist() == objects.tolist()
    strided = np.arange(400_000.0).reshape(800, 500)[::2, ::3]
    data, handle = _through(dumper, strided)
    assert len(data) < 1000 and len(os.listdir(tmp_path)) == 1  # made contiguous, dumped
    assert np.array_equal(handle.open(), strided)


def test_a_change_in_place_stays_in_the_process_that_made_it(tmp_path):
    _, handle = _through(Dumper(str(tmp_path)), make_dataset.func(1.0))
    mine, theirs = handle.open(), handle.open()
    mine["a"].values += 1
    assert float(mine["a"].sum()) == 2.0 * SIDE * SIDE
    assert float(theirs["a"].sum()) == float(handle.open()["a"].sum()) == 1.0 * SIDE * SIDE
    downstream = pickle.loads(pickle.dumps(handle))  # as a worker that reads it gets it
    assert float(downstream["a"].sum()) == 1.0 * SIDE * SIDE


@pytest.mark.timeout(120)
def test_downstream_tasks_receive_a_dumped_dataset(tmp_path):
    options = {**POOL, "factorize_tasks": False}  # each task its own job: the dataset travels
    expected = (1.5 + 1 + 3.0) * SIDE * SIDE
    with ox.Orchestrator(**options, dump_dir=str(tmp_path)) as orch:
        source = make_dataset(1.5)
        both = orch.compute([dataset_total(source), dataset_total(source), source])
        assert both[:2] == [expected, expected]  # each changed its own copy, not the file
        assert float(both[2]["a"].sum()) == 1.5 * SIDE * SIDE
        first, second = two_datasets(1.0)
        sums = orch.compute([dataset_total(first), dataset_total(second)])
        assert sums == [(2 + 2) * SIDE * SIDE, (4 + 6) * SIDE * SIDE]
        del both
        assert os.listdir(orch._backend.dump_dir) == []


def test_a_failing_result_leaves_no_file_of_its_datasets(tmp_path):
    def refuse(value):
        raise TypeError("cannot pickle '_thread.lock' object")

    value = [make_dataset.func(1.0), {"frame": make_frame.func(2.0)}]
    with pytest.raises(TypeError):
        Dumper(str(tmp_path)).encode(value, refuse)
    assert os.listdir(tmp_path) == []


@pytest.mark.usefixtures("full_disk")
def test_a_full_dump_dir_leaves_no_file_of_the_result(tmp_path):
    small = make_series.func(1.0, rows=9_000)  # 72 kB: dumped first, in the 100 kB left
    with pytest.raises(ox.DiskFullError, match="a result Dataset") as info:
        Dumper(str(tmp_path)).encode([small, make_dataset.func(2.0)], pickle.dumps)
    assert str(tmp_path) in str(info.value)
    assert os.listdir(tmp_path) == []  # the series' file too
