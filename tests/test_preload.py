"""``preload``: modules every worker imports before its first task, replacements included.

The module is written here into a temporary directory on ``sys.path``: it appends the pid of the
process that imports it to a file. With forkserver it is imported once, in the forkserver, and
every worker is forked with it; with fork and spawn each worker imports it as it starts. The
caller never imports it.
"""

from __future__ import annotations

import multiprocessing
import sys
import uuid

import pytest

import orchestrix as ox
from deadline import DEADLINE, guarded, within
from orchestrix.backends import AVAILABLE
from tasks import inc, preloaded, recorded

METHODS = [
    m for m in ("forkserver", "fork", "spawn") if m in multiprocessing.get_all_start_methods()
]
pool_only = pytest.mark.skipif("multiprocessing" not in AVAILABLE, reason="no multiprocessing")
dask_only = pytest.mark.skipif("local_dask" not in AVAILABLE, reason="no local_dask backend")


@pytest.fixture
def module(tmp_path, monkeypatch):
    """(name, log) of a fresh module that logs the pid of each process importing it."""
    name = f"ox_preload_{uuid.uuid4().hex[:8]}"
    log = tmp_path / "imports"
    source = f"import os\nwith open({str(log)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, str(log)
    assert name not in sys.modules  # the caller never imported it


def _run_each_in_a_new_worker(orch, name, count=6):
    futures = [orch.submit(preloaded, name) for _ in range(count)]
    return [within(DEADLINE, future.result) for future in futures]


@pool_only
@pytest.mark.parametrize("method", METHODS)
def test_every_worker_has_the_module_before_its_first_task(method, module):
    name, log = module
    options = {"mp_mode": method, "max_tasks_per_worker": 1, "preload": [name]}
    with guarded(mode="multiprocessing", nb_workers=2, **options) as orch:
        results = _run_each_in_a_new_worker(orch, name)
    pids = {pid for pid, _ in results}
    assert len(pids) == 6  # each task in a worker of its own: replacements included
    assert all(imported for _, imported in results)
    importers = recorded(log)
    if method == "forkserver":
        assert len(importers) == 1 and int(importers[0]) not in pids  # the forkserver, once
    else:
        assert pids <= {int(pid) for pid in importers}


@pool_only
@pytest.mark.parametrize("method", METHODS)
def test_a_missing_module_fails_the_start_naming_it(method):
    options = {"mp_mode": method, "preload": ["json", "ox_no_such_module"]}
    with pytest.raises(ox.ConfigError, match=r"'ox_no_such_module'.*ModuleNotFoundError"):
        within(DEADLINE, ox.Orchestrator, mode="multiprocessing", nb_workers=2, **options)


@pool_only
@pytest.mark.parametrize("method", METHODS)
def test_a_module_that_raises_fails_the_start_and_spares_the_forkserver(
    method, tmp_path, monkeypatch
):
    # multiprocessing's own forkserver preload forgives only an ImportError: this would kill it
    name = f"ox_raising_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('no licence for this module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    options = {"mp_mode": method, "preload": [name]}
    with pytest.raises(ox.ConfigError, match=rf"'{name}'.*RuntimeError: no licence"):
        within(DEADLINE, ox.Orchestrator, mode="multiprocessing", nb_workers=2, **options)
    with guarded(mode="multiprocessing", nb_workers=1, mp_mode=method) as orch:
        assert within(DEADLINE, orch.compute, inc(1)) == 2  # the next pool starts as usual


@pool_only
def test_a_pool_opened_while_the_forkserver_runs_still_gets_its_modules(module, caplog):
    name, log = module
    with guarded(mode="multiprocessing", nb_workers=1, mp_mode="forkserver") as first:
        assert within(DEADLINE, first.compute, inc(1)) == 2
        options = {"mp_mode": "forkserver", "max_tasks_per_worker": 1, "preload": [name]}
        with guarded(mode="multiprocessing", nb_workers=1, **options) as second:
            results = _run_each_in_a_new_worker(second, name, count=3)
    assert all(imported for _, imported in results)
    assert {pid for pid, _ in results} <= {int(pid) for pid in recorded(log)}  # each worker's
    assert "without the preload modules" in caplog.text and name in caplog.text


@dask_only
def test_every_dask_worker_has_the_module_replacements_too(module, tmp_path):
    name, log = module
    with guarded(mode="local_dask", nb_workers=1, preload=[name], retries=1) as orch:
        first_pid, imported = within(DEADLINE, orch.submit(preloaded, name).result)
        assert imported
        # this one kills its worker once: the nanny's replacement runs it, with the module
        pid, imported = within(DEADLINE, orch.submit(preloaded, name, str(tmp_path / "m")).result)
    assert imported and pid != first_pid
    assert {first_pid, pid} <= {int(pid) for pid in recorded(log)}


@dask_only
def test_a_missing_module_fails_the_dask_start_naming_it():
    options = {"preload": ["ox_no_such_module"]}
    with pytest.raises(ox.ConfigError, match=r"'ox_no_such_module'.*ModuleNotFoundError"):
        within(DEADLINE, ox.Orchestrator, mode="local_dask", nb_workers=1, **options)


@pool_only
def test_a_job_clock_starts_after_its_worker_has_imported_the_modules(tmp_path, monkeypatch):
    # A module slower to import than per_job_timeout: each replacement worker imports it again
    # (spawn), and its job must not be sent, nor timed, until it has.
    name = f"ox_slow_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import time\ntime.sleep(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    options = {"mp_mode": "spawn", "max_tasks_per_worker": 1, "per_job_timeout": 1, "retries": 0}
    with guarded(mode="multiprocessing", nb_workers=1, preload=[name], **options) as orch:
        results = _run_each_in_a_new_worker(orch, name, count=3)
    assert all(imported for _, imported in results) and len({pid for pid, _ in results}) == 3


@pool_only
@pytest.mark.parametrize(
    ("method", "says"),
    [("spawn", "exit as soon as they start.*code 3"), ("forkserver", "the forkserver died")],
)
def test_a_module_that_ends_its_process_fails_the_start(method, says, tmp_path, monkeypatch):
    name = f"ox_exiting_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    options = {"mp_mode": method, "preload": [name]}
    with pytest.raises(ox.OrchestrixError, match=says):
        within(DEADLINE, ox.Orchestrator, mode="multiprocessing", nb_workers=1, **options)
    with guarded(mode="multiprocessing", nb_workers=1, mp_mode=method) as orch:
        assert within(DEADLINE, orch.compute, inc(1)) == 2  # the next pool starts as usual
