"""Orchestrator lifecycle and the light import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import orchestrix as ox
from tasks import inc, square


def test_import_does_not_load_heavy_modules():
    code = (
        "import sys, orchestrix, orchestrix.config, orchestrix.graph.tasks;"
        "heavy = [m for m in ('dask', 'distributed', 'dask_jobqueue', 'memray')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_import_installs_no_hooks():
    code = (
        "import signal, sys, threading, os; before = dict(os.environ);"
        "handler = signal.getsignal(signal.SIGINT); hook = sys.excepthook;"
        "thook = threading.excepthook; import orchestrix;"
        "assert signal.getsignal(signal.SIGINT) is handler; assert sys.excepthook is hook;"
        "assert threading.excepthook is thook; assert dict(os.environ) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_close_is_idempotent_and_blocks_new_work():
    orch = ox.Orchestrator(mode="sequential")
    assert orch.compute(inc(1)) == 2
    orch.close()
    orch.close()
    orch.shutdown()
    assert orch.closed
    with pytest.raises(RuntimeError, match="closed"):
        orch.compute(inc(1))
    with pytest.raises(RuntimeError, match="closed"):
        orch.submit(square, 2)
    with pytest.raises(RuntimeError, match="closed"):
        orch.map(square, [2])


def test_context_manager_closes_on_exception():
    with pytest.raises(ZeroDivisionError), ox.Orchestrator(mode="sequential") as orch:
        raise ZeroDivisionError
    assert orch.closed


def test_orchestrator_is_an_executor():
    import concurrent.futures

    with ox.Orchestrator(mode="sequential") as orch:
        assert isinstance(orch, concurrent.futures.Executor)
        futures = [orch.submit(square, i) for i in range(5)]
        done = [f.result() for f in concurrent.futures.as_completed(futures)]
        assert sorted(done) == [0, 1, 4, 9, 16]


def test_abandoned_as_completed_leaves_backend_usable():
    with ox.Orchestrator(mode="sequential") as orch:
        iterator = orch.as_completed([inc(i) for i in range(10)])
        next(iterator)
        iterator.close()
        assert orch.compute(inc(5)) == 6


def test_repr_names_mode():
    with ox.Orchestrator(mode="sequential") as orch:
        assert "sequential" in repr(orch)
    assert "closed" in repr(orch)


def test_demo_command_runs():
    result = subprocess.run(
        [sys.executable, "-m", "orchestrix", "demo", "--size", "512", "--tile", "128"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "16 tiles" in result.stdout and "mean_elevation" not in result.stdout
    assert "elevation" in result.stdout


def test_demo_reports_config_errors_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "orchestrix", "demo", "--nb-workers", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ConfigError" in result.stderr


def test_demo_results_do_not_depend_on_fusion():
    from orchestrix.demo import build

    graph = build(256, 64)
    with (
        ox.Orchestrator(mode="sequential") as fused,
        ox.Orchestrator(mode="sequential", factorize_tasks=False) as plain,
    ):
        assert fused.compute(graph) == plain.compute(graph)


def test_notebook_representation_names_mode_and_workers():
    with ox.Orchestrator(mode="multiprocessing", nb_workers=2) as orch:
        page = orch._repr_html_()
        assert "multiprocessing" in page and "nb_workers" in page and "dump_dir" in page
        assert orch.dashboard_link is None
