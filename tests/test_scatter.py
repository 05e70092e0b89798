"""``Orchestrator.scatter``: a value sent once per worker, whose handle tasks receive as the value
itself, in every mode; sequential is the oracle."""

from __future__ import annotations

import os

import numpy as np
import pytest

import orchestrix as ox
from conftest import BACKENDS
from orchestrix.backends.pool import manager
from scatter_tasks import nested_sum, plain_window_sum, who_reads, window_sum

LOCAL = [name for name in ("sequential", "mp-forkserver", "local_dask") if name in BACKENDS]
GRID = (1000, 1000)  # 8 MB


@pytest.fixture(params=LOCAL)
def local(request) -> dict:
    return dict(BACKENDS[request.param])


def _grid() -> np.ndarray:
    return np.arange(GRID[0] * GRID[1], dtype=np.float64).reshape(GRID) % 7


def _dataset():
    xr = pytest.importorskip("xarray")
    grid = _grid()
    return xr.Dataset({"a": (("y", "x"), grid), "b": (("y", "x"), grid * 2)})


def _uses(value) -> list:
    """20 graph tasks, 3 submits, a map and a nested use of ``value`` (a handle or the value)."""
    return [window_sum(value, 10 * i) for i in range(20)] + [
        nested_sum({"grids": [value, value], "offset": 1.0}, 5)
    ]


def _run(orch, value) -> list:
    results = orch.compute(_uses(value))
    results += [orch.submit(plain_window_sum, value, start).result(60) for start in (0, 7, 9)]
    results += list(orch.map(plain_window_sum, [value] * 4, range(4)))
    return results


@pytest.mark.timeout(300)
@pytest.mark.parametrize("make", [_grid, _dataset], ids=["numpy", "xarray"])
def test_tasks_given_a_handle_get_the_value(local, oracle, make):
    value = make()
    expected = _run(oracle, value)  # the value itself, passed directly
    with ox.Orchestrator(**local) as orch:
        shared = orch.scatter(value)
        assert isinstance(shared, ox.Shared)
        assert _run(orch, shared) == expected


def test_sequential_tasks_get_the_value_itself(oracle):
    value = _grid()
    assert oracle.compute(who_reads(oracle.scatter(value), 0))[1] == id(value)


@pytest.mark.timeout(300)
def test_each_worker_rebuilds_the_value_once(local):
    with ox.Orchestrator(**local) as orch:
        shared = orch.scatter(_grid())
        seen = orch.compute([who_reads(shared, i) for i in range(20)])
    objects_per_process: dict[int, set[int]] = {}
    for pid, ident in seen:
        objects_per_process.setdefault(pid, set()).add(ident)
    assert all(len(objects) == 1 for objects in objects_per_process.values())


@pytest.mark.timeout(120)
def test_the_value_is_not_in_the_payload_and_its_file_goes_at_close(tmp_path, monkeypatch):
    sent: list[int] = []

    def measured(jobs, owner):
        payload = pickle_work(jobs, owner)
        sent.append(len(payload))
        return payload

    pickle_work = manager.pickle_work
    monkeypatch.setattr(manager, "pickle_work", measured)
    options = {**BACKENDS["mp-forkserver"], "dump_dir": str(tmp_path)}
    value = _grid()
    with ox.Orchestrator(**options) as orch:
        shared = orch.scatter(value)
        assert len(os.listdir(orch._backend.dump_dir)) == 1  # written once
        assert orch.compute([window_sum(shared, i) for i in range(20)])[3] == float(
            value[3:103, :100].sum()
        )
        private = orch._backend.dump_dir
    assert sent and max(sent) < 50_000 < value.nbytes
    assert not os.path.exists(private)


@pytest.mark.timeout(300)
def test_the_value_is_not_in_a_dask_payload(monkeypatch):
    if "local_dask" not in BACKENDS:
        pytest.skip("no local_dask")
    from orchestrix.backends.dask import backend

    sent: list[int] = []

    def measured(unit, owner=None):
        payload = dumps_work(unit, owner)
        sent.append(len(payload))
        return payload

    dumps_work = backend.dumps_work
    monkeypatch.setattr(backend, "dumps_work", measured)
    value = _grid()
    with ox.Orchestrator(**BACKENDS["local_dask"]) as orch:
        shared = orch.scatter(value)
        assert orch.compute(window_sum(shared, 3)) == float(value[3:103, :100].sum())
    assert sent and max(sent) < 50_000 < value.nbytes


@pytest.mark.timeout(120)
def test_without_dump_files_the_value_still_reaches_the_workers(oracle, tmp_path):
    value = _grid()
    options = {**BACKENDS["mp-forkserver"], "dump_to_disk": False}
    with ox.Orchestrator(**options) as orch:
        assert orch.compute(window_sum(orch.scatter(value), 3)) == float(value[3:103, :100].sum())


@pytest.mark.timeout(300)
def test_handles_of_closed_and_other_orchestrators_are_refused(local):
    value = _grid()
    with ox.Orchestrator(mode="sequential") as other:
        foreign = other.scatter(value)
        with ox.Orchestrator(**local) as orch:
            with pytest.raises(ox.TaskError, match="window_sum") as info:
                orch.compute(window_sum(foreign, 0))
            assert "not the one that runs this task" in str(info.value) + str(info.value.__cause__)
    with ox.Orchestrator(**local) as orch:
        with pytest.raises(ox.TaskError, match="window_sum") as info:
            orch.compute(window_sum(foreign, 0))
        assert "is closed" in str(info.value) + str(info.value.__cause__)
        assert orch.compute(window_sum(orch.scatter(value), 0)) == float(value[:100, :100].sum())
    with pytest.raises(RuntimeError):
        orch.scatter(value)


def test_a_handle_is_named_by_its_id_in_keys(oracle):
    value = _grid()
    first, again = oracle.scatter(value), oracle.scatter(value.copy())
    assert first.id == again.id and ox.tokenize(first) == ox.tokenize(again)
    assert window_sum(first, 0).key == window_sum(again, 0).key
    assert ox.tokenize(first) != ox.tokenize(oracle.scatter(value + 1))
    assert ox.tokenize(first) != ox.tokenize(value)  # a handle is not its value


@pytest.mark.timeout(300)
def test_a_dask_worker_without_the_value_fetches_it(oracle):
    if "local_dask" not in BACKENDS:
        pytest.skip("no local_dask")
    value = _grid()
    expected = oracle.compute([window_sum(value, i) for i in range(20)])
    with ox.Orchestrator(**BACKENDS["local_dask"]) as orch:
        shared = orch.scatter(value, broadcast=False)  # on one worker: the other fetches it
        assert orch.compute([window_sum(shared, i) for i in range(20)]) == expected


class _Counted:
    """A value that counts how often it is walked for a token."""

    walks = 0

    def __reduce__(self):
        _Counted.walks += 1
        return (_Counted, ())


def test_a_handle_is_tokenized_without_walking_its_value(oracle):
    shared = oracle.scatter(_Counted())
    walks = _Counted.walks
    keys = {window_sum(shared, 0).key for _ in range(5)}
    assert len(keys) == 1 and _Counted.walks == walks  # the value's token was taken once


@pytest.mark.timeout(300)
def test_keys_of_handles_are_the_same_in_every_mode(local, oracle):
    value = _grid()
    key = window_sum(oracle.scatter(value), 0).key
    with ox.Orchestrator(**local) as orch:
        assert {window_sum(orch.scatter(value), 0).key for _ in range(2)} == {key}
