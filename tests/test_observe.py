"""Seeing a run: worker logs, the run's log, timing records, the summary, progress, run.json."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import pytest

import orchestrix as ox
from conftest import BACKENDS
from tasks import chatty, crash_once, fail, hog, inc, nap, spin

OBSERVED = [
    name for name in BACKENDS if name in ("sequential", "mp-forkserver", "mp-fork", "local_dask")
]
WORKER_PROCESSES = [name for name in OBSERVED if name != "sequential"]


def _worker_logs(out_dir) -> dict[str, list[str]]:
    files = glob.glob(os.path.join(out_dir, "workers_log", "worker-*.log"))
    return {path: open(path, encoding="utf-8").read().splitlines() for path in files}


@pytest.mark.filterwarnings("ignore:chatty task")  # sequential: warnings stay the caller's
@pytest.mark.parametrize("name", OBSERVED)
def test_each_task_log_line_is_written_once_with_its_key(name, tmp_path):
    out = tmp_path / "run"
    tiles = [chatty(i) for i in range(40)]
    with ox.Orchestrator(**BACKENDS[name], out_dir=str(out)) as orch:
        assert orch.compute(tiles) == list(range(40))
    logs = _worker_logs(out)
    assert logs, "no worker log written"
    lines = [line for content in logs.values() for line in content if "says hello" in line]
    assert len(lines) == 40
    for index, tile in enumerate(tiles):  # each record carries the key of its task
        mine = [line for line in lines if f"chatty task {index} says" in line]
        assert len(mine) == 1 and f"[{tile.key}]" in mine[0]
    for path in logs:  # file names: worker-<host>-<pid>.log
        assert re.fullmatch(r"worker-.+-\d+\.log", os.path.basename(path))
    caller_log = (out / "orchestrix.log").read_text()
    assert "says hello" not in caller_log  # a forked worker does not write into the caller's log
    assert "orchestrator started" in caller_log and "run summary" in caller_log


@pytest.mark.parametrize("name", WORKER_PROCESSES)
def test_warnings_of_a_task_land_in_its_worker_log(name, tmp_path):
    with ox.Orchestrator(**BACKENDS[name], out_dir=str(tmp_path)) as orch:
        orch.compute([chatty(i) for i in range(6)])
    lines = [line for content in _worker_logs(tmp_path).values() for line in content]
    warned = [line for line in lines if "UserWarning: chatty" in line]
    assert len(warned) == 6
    assert all(re.search(r"\[chatty-[0-9a-f]+\]", line) for line in warned)


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_recycled_workers_write_no_duplicate_lines(method, tmp_path):
    """CARS added a handler per task: 100 tasks on 2 workers wrote 550 lines."""
    options = {"mode": "multiprocessing", "nb_workers": 2, "mp_mode": method}
    with ox.Orchestrator(**options, max_tasks_per_worker=10, out_dir=str(tmp_path)) as orch:
        assert orch.compute([chatty(i) for i in range(100)]) == list(range(100))
    logs = _worker_logs(tmp_path)
    assert len(logs) >= 10  # one file per worker process: 100 tasks, 10 per worker
    hello = [line for content in logs.values() for line in content if "says hello" in line]
    assert len(hello) == 100
    assert len({line.split(" says")[0].split("] ")[-1] for line in hello}) == 100
    for content in logs.values():
        assert sum("started (python" in line for line in content) == 1
        # a start line, then per task a log line and a warning (with its source line)
        assert len(content) <= 1 + 3 * 10


@pytest.mark.filterwarnings("ignore:chatty task")
def test_nothing_is_written_without_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ox.Orchestrator(mode="multiprocessing", nb_workers=2) as orch:
        orch.compute([chatty(i) for i in range(4)])
        orch.summary()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", OBSERVED)
def test_summary_reports_known_sleeps(name):
    naps = [nap(0.05, i) for i in range(6)] + [nap(0.2, i) for i in range(6, 9)]
    with ox.Orchestrator(**BACKENDS[name]) as orch:
        orch.compute(naps)
        orch.compute(spin(0.2))
    summary = orch.summary()
    assert summary.tasks_done == 10 and summary.tasks_failed == 0
    stats = summary.by_name["nap"]
    assert stats.count == 9
    # sleeps last at least what they ask; the upper bounds only catch gross errors
    assert 0.2 <= stats.p95_s < 0.5
    assert 0.05 <= stats.median_s < 0.2
    assert (6 * 0.05 + 3 * 0.2) / 9 <= stats.mean_s < 0.25
    assert summary.by_name["spin"].count == 1
    records = [r for r in orch.monitor.tasks if r[1] in ("nap", "spin")]
    sleep_cpu = [r[4] * r[5] for r in records if r[1] == "nap"]  # wall * CPU per wall
    spin_cpu = next(r[4] * r[5] for r in records if r[1] == "spin")
    assert max(sleep_cpu) < 0.05  # sleeping costs no CPU
    assert spin_cpu >= 0.15  # busy for 0.2 s of CPU time
    assert summary.throughput_per_s > 0 and summary.wall_seconds > 0.4
    assert all(facts["peak_rss_mb"] > 0 for facts in summary.workers.values())
    assert "nap" in str(summary) and "tasks done" in str(summary)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux clear_refs")
@pytest.mark.parametrize("name", ["sequential", "mp-forkserver"])
def test_peak_memory_is_per_task(name):
    """Each task's peak is measured over its own run, not since its worker started."""
    graph = [hog(400, 0.05)] + [nap(0.05, i) for i in range(4)]
    with ox.Orchestrator(**BACKENDS[name]) as orch:
        orch.compute(graph[0])
        orch.compute(graph[1:])
    by_name = orch.summary().by_name
    assert by_name["hog"].max_peak_rss_mb >= 400
    assert by_name["nap"].max_peak_rss_mb < by_name["hog"].max_peak_rss_mb - 300


def test_failures_and_retries_are_counted(tmp_path):
    with ox.Orchestrator(mode="multiprocessing", nb_workers=2, out_dir=str(tmp_path)) as orch:
        with pytest.raises(ox.TaskError):
            orch.compute(fail())
        orch.compute([inc(i) for i in range(5)])
        assert orch.compute(crash_once(str(tmp_path / "marker"), 7)) == 7
    summary = orch.summary()
    assert summary.tasks_failed == 1 and summary.tasks_done == 6
    assert summary.tasks_retried == 1
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["summary"]["tasks_failed"] == 1
    (failure,) = data["failures"]
    assert failure["name"] == "fail" and "ValueError: boom" in failure["error"]
    assert failure["worker"] and "Traceback" in failure["traceback"]
    assert len(data["tasks"]["key"]) == len(data["tasks"]["wall"]) == summary.tasks_done + 1
    assert data["mode"] == "multiprocessing" and data["nb_workers"] == 2


@pytest.mark.parametrize("name", ["sequential", "mp-forkserver"])
def test_progress_bar_on_request_only(name, capfd):
    with ox.Orchestrator(**BACKENDS[name]) as orch:
        orch.compute([inc(i) for i in range(20)])
        assert capfd.readouterr().err == ""  # not a terminal: no bar by default
        orch.compute([inc(i) for i in range(30)], progress=True)
        err = capfd.readouterr().err
        assert "compute" in err and "30/30" in err
        list(orch.map(lambda x: x, range(12), chunksize=5, progress=True))
        err = capfd.readouterr().err
        assert "map" in err and "12/12" in err
        list(orch.as_completed([inc(i) for i in range(7)], progress=True))
        assert "7/7" in capfd.readouterr().err
    with ox.Orchestrator(**BACKENDS[name], progress=True) as orch:
        orch.compute([inc(i) for i in range(5)], progress=False)
        assert capfd.readouterr().err == ""


def test_progress_bar_counts_failures(capfd):
    with ox.Orchestrator(mode="sequential", progress=True) as orch, pytest.raises(ox.TaskError):
        orch.compute([inc(1), fail()])
    assert "failed=1" in capfd.readouterr().err


def test_notebook_view_shows_counts_and_memory(tmp_path):
    with ox.Orchestrator(mode="multiprocessing", nb_workers=2, out_dir=str(tmp_path)) as orch:
        orch.compute([inc(i) for i in range(8)])
        view = orch._repr_html_()
        assert "8 done, 0 running, 0 failed" in view
        assert "peak RSS" in view and "MB per worker" in view
        assert "<table>" in orch.summary()._repr_html_()


# -- profiling ----------------------------------------------------------------------------------

PROFILED = [name for name in OBSERVED if name != "mp-fork"]


@pytest.mark.parametrize("name", PROFILED)
def test_cprofile_writes_one_profile_per_worker_and_a_summary(name, tmp_path):
    options = {**BACKENDS[name], "out_dir": str(tmp_path), "profiling": {"mode": "cprofile"}}
    with ox.Orchestrator(**options) as orch:
        assert orch.compute([spin(0.02) for _ in range(6)])
    profiles = glob.glob(str(tmp_path / "profiling" / "cprofile" / "worker-*.prof"))
    workers = {record[2] for record in orch.monitor.tasks}  # a worker that ran nothing writes none
    assert sorted(profiles) == sorted(
        str(tmp_path / "profiling" / "cprofile" / f"worker-{worker}.prof") for worker in workers
    )
    summary = (tmp_path / "profiling" / "cprofile_summary.txt").read_text()
    assert f"{len(profiles)} worker profile" in summary
    assert "(spin)" in summary


def test_cprofile_profiles_recycled_workers_too(tmp_path):
    options = {"mode": "multiprocessing", "nb_workers": 2, "max_tasks_per_worker": 3}
    with ox.Orchestrator(**options, out_dir=str(tmp_path), profiling={"mode": "cprofile"}) as orch:
        orch.compute([inc(i) for i in range(12)])
    assert len(glob.glob(str(tmp_path / "profiling" / "cprofile" / "*.prof"))) >= 4


@pytest.mark.parametrize("name", PROFILED)
def test_memray_captures_each_worker_and_the_profile_command_summarises(name, tmp_path):
    pytest.importorskip("memray")
    from orchestrix.__main__ import main

    options = {**BACKENDS[name], "out_dir": str(tmp_path), "profiling": {"mode": "memray"}}
    with ox.Orchestrator(**options) as orch:
        orch.compute([hog(60, 0.01), hog(61, 0.01), nap(0.01)])
    captures = glob.glob(str(tmp_path / "profiling" / "memray" / "worker-*.bin"))
    assert len(captures) == (1 if name == "sequential" else 2)  # every worker process, busy or not
    assert main(["profile", str(tmp_path)]) == 0
    assert (tmp_path / "profiling" / "memray_summary.txt").exists()
    assert len(glob.glob(str(tmp_path / "profiling" / "memray" / "worker-*.html"))) == len(captures)


@pytest.mark.parametrize("name", ["sequential", "mp-forkserver", "local_dask"])
def test_loop_testing_reports_the_leaking_task(name):
    if name not in BACKENDS:
        pytest.skip(f"{name} is not available")
    from tasks import leaky, tidy

    options = {**BACKENDS[name], "profiling": {"mode": "timing", "loop_testing": True}}
    with ox.Orchestrator(**options) as orch:
        assert orch.compute([tidy(8, i) for i in range(3)]) == [8 * 2**20] * 3
        orch.compute([leaky(8, i) for i in range(3)])
    leaks = orch.summary().leaks
    assert leaks["leaky"]["runs"] == 3
    assert 6 <= leaks["leaky"]["growth_mb_per_run"] <= 10  # 8 MB kept per run
    assert abs(leaks["tidy"]["growth_mb_per_run"]) < 1
    assert "leaky grows private memory" in str(orch.summary())


def test_report_of_a_real_run(tmp_path):
    from orchestrix.__main__ import main

    with ox.Orchestrator(mode="multiprocessing", nb_workers=2, out_dir=str(tmp_path)) as orch:
        orch.compute([nap(0.01, i) for i in range(10)] + [hog(50)])
        with pytest.raises(ox.TaskError):
            orch.compute(fail("tile 7 is corrupt"))
        path = orch.report(tmp_path / "live.html")
    page = Path(path).read_text(encoding="utf-8")
    assert "nap" in page and "hog" in page and "tile 7 is corrupt" in page
    assert page.count("<svg") >= 3
    assert main(["report", str(tmp_path)]) == 0  # the same from run.json, after close
    assert "tile 7 is corrupt" in (tmp_path / "report.html").read_text(encoding="utf-8")
