"""Nothing delivered or stored is lost, nothing half-written is left (issue 12): paths that a
task's ``os.chdir`` cannot move, a full disk under the results or the dump directory, a result
whose pickling fails after its arrays were dumped."""

from __future__ import annotations

import builtins
import errno
import os
import subprocess
import threading

import numpy
import pytest

import orchestrix as ox
from orchestrix import atomic
from orchestrix.engine.store import RESULTS_DIR
from orchestrix.worker.transfer import Dumper

BIG = 300_000  # float64 items: 2.4 MB, more than the small disks below hold


@ox.task
def moving(x, where):
    os.chdir(where)  # in sequential mode this is the caller's working directory
    return x + 1


@ox.task
def plus(x):
    return x + 1


@ox.task
def ones(n):
    return numpy.ones(n)


@ox.task
def two_arrays(n):
    return numpy.ones(n), numpy.zeros(n)


@ox.task
def arrays_and_a_lock(n):
    return [numpy.ones(n), numpy.ones(n), threading.Lock()]  # the lock cannot be pickled


@pytest.mark.timeout(60)
def test_relative_out_dir_survives_a_task_that_changes_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    targets = [moving(1, str(elsewhere)), plus(2)]
    with ox.Orchestrator(mode="sequential", out_dir="run", resume=True) as orch:
        assert orch.compute(targets) == [2, 3]
    assert os.getcwd() == str(elsewhere)
    monkeypatch.chdir(tmp_path)
    assert len(os.listdir(tmp_path / "run" / RESULTS_DIR)) == 2
    assert not (elsewhere / "run").exists()
    with ox.Orchestrator(mode="sequential", out_dir="run", resume=True) as orch:
        assert orch.compute(targets) == [2, 3]
        assert orch.summary().tasks_loaded == 2 and orch.summary().tasks_done == 0


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 1 MB (a tmpfs; skipped where mounting is not permitted)."""
    target = tmp_path / "small"
    target.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)]
    try:
        mounted = subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


class _Disk:
    """A disk with ``room`` bytes left: past that, writes fail with ENOSPC."""

    def __init__(self, room):
        self.room = room

    def open(self, path, mode="r", *args, **kwargs):
        return _FileOn(self, builtins.open(path, mode, *args, **kwargs))


class _FileOn:
    def __init__(self, disk, stream):
        self._disk, self._stream = disk, stream

    def write(self, data):
        size = memoryview(data).nbytes
        if size > self._disk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.room -= size
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Atomic writes (results, dump files) see a disk with 100 kB left (in this process, and in
    workers forked from it)."""
    monkeypatch.setattr(atomic, "open", _Disk(100_000).open, raising=False)


def _check_store_on_full_disk(out_dir):
    with ox.Orchestrator(mode="sequential", out_dir=out_dir, resume=True) as orch:
        assert orch.compute([plus(1), ones(10)])[0] == 2  # stored: small
        with pytest.raises(ox.DiskFullError) as info:
            orch.compute(ones(BIG))
    results = os.path.join(out_dir, RESULTS_DIR)
    message = str(info.value)
    assert results in message and f"{BIG * 8 + 128:,} bytes" in message
    assert info.value.directory == results and info.value.needed_bytes == BIG * 8 + 128
    assert len(os.listdir(results)) == 2  # the earlier results, and no part of the big one
    with ox.Orchestrator(mode="sequential", out_dir=out_dir, resume=True) as orch:
        small, array = orch.compute([plus(1), ones(10)])
        assert orch.summary().tasks_loaded == 2
    assert small == 2 and array.tolist() == [1.0] * 10


@pytest.mark.timeout(60)
def test_full_disk_under_results_names_it_and_keeps_earlier_results(tmp_path, full_disk):
    _check_store_on_full_disk(str(tmp_path / "run"))


@pytest.mark.timeout(60)
def test_really_full_disk_under_results(small_disk):
    _check_store_on_full_disk(str(small_disk / "run"))


def _check_dump_on_full_disk(dump_dir, mp_mode):
    options = {"mode": "multiprocessing", "nb_workers": 2, "mp_mode": mp_mode}
    with ox.Orchestrator(**options, dump_dir=str(dump_dir), retries=0) as orch:
        kept = orch.compute(ones(20_000))  # 160 kB: dumped
        with pytest.raises(ox.TaskError) as info:
            orch.compute(two_arrays(BIG // 4))  # 600 kB each: the second does not fit
        private = orch._backend.dump_dir
        left = os.listdir(private)
        assert kept.sum() == 20_000
    error = info.value
    assert error.name == "two_arrays" and isinstance(error.__cause__, ox.DiskFullError)
    assert private in str(error) and f"{BIG // 4 * 8:,} bytes" in str(error)
    return left


@pytest.mark.timeout(120)
def test_full_dump_dir_fails_the_task_naming_it_and_leaves_no_file(tmp_path, full_disk):
    # fork: the workers inherit the full disk; the first result's file (160 kB) does not fit
    # either, so this run holds no file at all when the error comes.
    options = {"mode": "multiprocessing", "nb_workers": 2, "mp_mode": "fork", "retries": 0}
    with ox.Orchestrator(**options, dump_dir=str(tmp_path)) as orch:
        with pytest.raises(ox.TaskError) as info:
            orch.compute(two_arrays(BIG // 4))
        assert os.listdir(orch._backend.dump_dir) == []
    assert isinstance(info.value.__cause__, ox.DiskFullError)
    assert str(tmp_path) in str(info.value) and f"{BIG // 4 * 8:,} bytes" in str(info.value)


@pytest.mark.timeout(120)
def test_really_full_dump_dir_fails_the_task_and_leaves_no_file(small_disk):
    # The array kept is a memory map of a file already unlinked: it holds its space, not a name.
    assert _check_dump_on_full_disk(small_disk, "forkserver") == []


def test_dumper_removes_the_files_of_a_result_whose_dump_fails(tmp_path, full_disk):
    dumper = Dumper(str(tmp_path))
    with pytest.raises(ox.DiskFullError, match=str(tmp_path)):
        dumper.encode([numpy.ones(10_000), numpy.ones(10_000)], lambda value: b"")
    assert os.listdir(tmp_path) == []


# -- a result that cannot be pickled after its arrays were dumped --------------------------


@pytest.mark.timeout(120)
def test_a_result_that_cannot_be_pickled_leaves_no_dump_file(tmp_path):
    options = {"mode": "multiprocessing", "nb_workers": 2, "retries": 0}
    with ox.Orchestrator(**options, dump_dir=str(tmp_path)) as orch:
        with pytest.raises(ox.TaskError, match="could not be pickled"):
            orch.compute(arrays_and_a_lock(100_000))
        assert os.listdir(orch._backend.dump_dir) == []
        assert orch.compute(plus(1)) == 2


def test_dumper_removes_the_files_of_a_result_that_cannot_be_pickled(tmp_path):
    def refuse(value):
        raise TypeError("cannot pickle '_thread.lock' object")

    with pytest.raises(TypeError):
        Dumper(str(tmp_path)).encode([numpy.ones(10_000), numpy.ones(10_000)], refuse)
    assert os.listdir(tmp_path) == []
