"""Shared fixtures: every contract test runs on every backend that exists (and every start method
of the multiprocessing backend), and no test may leave a process behind."""

from __future__ import annotations

import multiprocessing
import os

import psutil
import pytest

import orchestrix as ox
from durable_helpers import DURABLE, PARALLEL
from orchestrix.backends import AVAILABLE
from slurm import pbs_wrappers, slurm_running

#: set by tests/test_plugin_cars.py for the pytest process it starts: the CARS plugin's tests run
#: there, not in the main session. ``import cars`` changes the whole process: it points
#: DASK_CONFIG at CARS's dask config (forkserver workers; comm retries 10 and timeouts 60/120 s,
#: under which a local_dask call whose crashed worker held a finished result waits ~150 s for
#: dask to give up on it, past tests/test_deadlock.py's deadline), sets OMP_NUM_THREADS and GDAL
#: variables, and imports distributed, whose tblib pickling changes how exceptions pickle.
CARS_SESSION = os.environ.get("ORCHESTRIX_CARS_SESSION") == "1"
collect_ignore_glob = [] if CARS_SESSION else ["test_cars_*.py"]

BACKENDS: dict[str, dict] = {"sequential": {"mode": "sequential"}}
if "multiprocessing" in AVAILABLE:
    for method in ("forkserver", "fork", "spawn"):
        if method in multiprocessing.get_all_start_methods():
            BACKENDS[f"mp-{method}"] = {
                "mode": "multiprocessing",
                "nb_workers": 2,
                "mp_mode": method,
            }

if "local_dask" in AVAILABLE:
    BACKENDS["local_dask"] = {"mode": "local_dask", "nb_workers": 2}
if "slurm_dask" in AVAILABLE and slurm_running():
    # Worker jobs inherit the environment: let them import the tests' task module.
    _tests = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_tests, os.environ.get("PYTHONPATH")]))
    _jobs = {"account": "ci", "nb_workers": 2, "max_ram_per_worker": 1000}
    BACKENDS["slurm_dask"] = {"mode": "slurm_dask", **_jobs}
    if pbs_wrappers():
        BACKENDS["pbs_dask"] = {"mode": "pbs_dask", **_jobs}


@pytest.fixture(params=list(BACKENDS))
def options(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> dict:
    """Orchestrator options of one backend."""
    if BACKENDS[request.param]["mode"] == "pbs_dask":
        # Debian's qsub wrapper writes job output into the current directory, whatever #PBS -o says
        monkeypatch.chdir(tmp_path)
    return dict(BACKENDS[request.param])


@pytest.fixture
def orch(options: dict):
    with ox.Orchestrator(**options) as orchestrator:
        yield orchestrator


@pytest.fixture
def oracle():
    """The sequential orchestrator: what every backend must reproduce."""
    with ox.Orchestrator(mode="sequential") as orchestrator:
        yield orchestrator


def _children() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE or "resource_tracker" not in " ".join(
                child.cmdline()
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every worker (and the forkserver orchestrix started) is gone after each test."""
    before = {p.pid for p in _children()}
    yield
    leaked = [p for p in _children() if p.pid not in before]
    if leaked:
        _, alive = psutil.wait_procs(leaked, timeout=3)
        leaked = [p for p in alive if p.is_running()]
    assert not leaked, f"processes left behind: {[(p.pid, p.name(), p.cmdline()) for p in leaked]}"


@pytest.fixture(params=list(DURABLE))
def durable(request) -> dict:
    """Options of each mode that durable runs are tested on (sequential, multiprocessing,
    local_dask)."""
    return dict(DURABLE[request.param])


@pytest.fixture(params=PARALLEL)
def parallel(request) -> dict:
    """Options of each mode of durable runs that runs tasks in other processes."""
    return dict(DURABLE[request.param])


@pytest.fixture(autouse=True)
def process_hooks_restored():
    """What a library may change for the whole process is put back after each test: CARS's
    multiprocessing cluster sets a threading excepthook that SIGKILLs the process (any later
    thread's exception would end the test session), and libraries install SIGINT handlers."""
    import signal
    import threading

    excepthook, sigint = threading.excepthook, signal.getsignal(signal.SIGINT)
    yield
    threading.excepthook = excepthook
    if signal.getsignal(signal.SIGINT) is not sigint:
        signal.signal(signal.SIGINT, sigint)
