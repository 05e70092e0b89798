"""Profile summaries (orchestrix.reports.profiles), from real cProfile files and memray captures
written the way the workers write them, without going through the Orchestrator."""

from __future__ import annotations

import cProfile
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrix.__main__ import main
from orchestrix.errors import OrchestrixError
from orchestrix.graph.tasks import map_nested
from orchestrix.reports.profiles import (
    C_TASKS,
    MEMRAY_MISSING,
    OUTSIDE_TASKS,
    _task_of,
    summarize_cprofile,
    summarize_memray,
)
from orchestrix.worker.execute import call_task

MiB = 2**20


def busy_tile(n: int) -> int:
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def _write_cprofiles(out_dir: Path, workers: int = 2) -> Path:
    directory = out_dir / "profiling" / "cprofile"
    directory.mkdir(parents=True)
    for pid in range(1, workers + 1):
        profile = cProfile.Profile()
        profile.enable()  # as the workers do: only around each task call
        busy_tile(20_000)
        profile.disable()
        profile.dump_stats(directory / f"worker-testhost-{pid}.prof")
    return directory


def test_cprofile_summary_merges_the_workers(tmp_path):
    _write_cprofiles(tmp_path)
    path = summarize_cprofile(tmp_path, top=10)
    assert path == str(tmp_path / "profiling" / "cprofile_summary.txt")
    text = Path(path).read_text()
    assert "2 worker profiles merged" in text
    assert "tasks' profiled time:" in text
    assert "busy_tile" in text
    # paths under an import root (pytest put tests/ on sys.path) are shortened
    assert re.search(r" test_profiles\.py:\d+\(busy_tile\)$", text, re.M), text


def test_cprofile_summary_skips_a_truncated_profile(tmp_path):
    directory = _write_cprofiles(tmp_path)
    (directory / "worker-testhost-3.prof").write_bytes(b"\x00\x01cut short")
    text = Path(summarize_cprofile(tmp_path)).read_text()
    assert "2 worker profiles merged" in text
    assert "# skipped worker-testhost-3.prof: cannot be read" in text
    assert "busy_tile" in text


def test_cprofile_summary_without_profiles(tmp_path):
    assert summarize_cprofile(tmp_path) is None
    assert summarize_memray(tmp_path) == []


# -- memray -------------------------------------------------------------------------------------

# A worker as observe.py runs one: a Tracker for the process's life, tasks called by call_task.
WORKER_SCRIPT = textwrap.dedent(
    """
    import os, socket, sys
    import memray
    from orchestrix.worker.execute import call_task
    from orchestrix.graph.tasks import TaskNode

    KEEP = []  # what the tasks allocate stays live until the process's peak

    def make_big():
        KEEP.append(bytearray(50 * 2**20))

    def make_small():
        KEEP.append(bytearray(2**20))

    path = os.path.join(sys.argv[1], f"worker-{socket.gethostname()}-{os.getpid()}.bin")
    with memray.Tracker(path, follow_fork=False, native_traces=False):
        KEEP.append(bytearray(2 * 2**20))  # outside any task
        for func in (make_big, make_small):
            call_task(TaskNode.call(func, func.__qualname__, (), {}, func.__name__ + "-1"), {})
        # a task with no Python frame of its own
        node = TaskNode.call(bytearray, "bytearray", (3 * 2**20,), {}, "bytearray-1")
        KEEP.append(call_task(node, {}))
    """
)


@pytest.fixture(scope="module")
def memray_run(tmp_path_factory):
    """One out_dir holding one worker's memray capture, and what summarize_memray returned."""
    pytest.importorskip("memray", reason="memray is not installed (orchestrix[profiling])")
    out_dir = tmp_path_factory.mktemp("memray_run")
    directory = out_dir / "profiling" / "memray"
    directory.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", WORKER_SCRIPT, str(directory)], check=True, timeout=120)
    return out_dir, summarize_memray(out_dir)


def _task_rows(text: str) -> dict[str, tuple[float, int]]:
    """task -> (MiB held, workers), from the summary's per-task table."""
    units = {"B": 1 / MiB, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    rows = {}
    for match in re.finditer(
        r"^ *([\d.]+) (B|KiB|MiB|GiB) +(\d+)  (.+?)(?:  \(.*\))?$", text, re.M
    ):
        rows[match[4]] = (float(match[1]) * units[match[2]], int(match[3]))
    return rows


def test_memray_summary_attributes_memory_to_tasks(memray_run):
    out_dir, written = memray_run
    summary = out_dir / "profiling" / "memray_summary.txt"
    assert written[0] == str(summary)
    text = summary.read_text()
    rows = _task_rows(text)
    assert 49.5 < rows["make_big"][0] < 51, text
    assert 0.9 < rows["make_small"][0] < 1.5, text
    assert 2.9 < rows[C_TASKS][0] < 3.5, text
    assert rows[OUTSIDE_TASKS][0] >= 2, text
    assert rows["make_big"][1] == 1
    # sorted by memory
    order = [name for name in rows if name in ("make_big", C_TASKS, "make_small")]
    assert order == ["make_big", C_TASKS, "make_small"], text
    assert "1 worker capture in" in text
    worker = r"^ *5\d\.\d MiB +\d+ B +[\d,]+  worker-.+-\d+  \(worker-.+\.html\)$"
    assert re.search(worker, text, re.M), text


def test_memray_flame_graph_is_written(memray_run):
    out_dir, written = memray_run
    (capture,) = (out_dir / "profiling" / "memray").glob("*.bin")
    html = capture.with_suffix(".html")
    assert str(html) in written
    content = html.read_text(errors="replace")
    assert len(content) > 10_000
    assert "<html" in content.lower()
    assert "make_big" in content


def test_memray_skips_an_unreadable_capture(memray_run, tmp_path):
    pytest.importorskip("memray")
    directory = tmp_path / "profiling" / "memray"
    directory.mkdir(parents=True)
    (directory / "worker-testhost-9.bin").write_bytes(b"not a capture")
    written = summarize_memray(tmp_path)
    assert written == [str(tmp_path / "profiling" / "memray_summary.txt")]
    text = Path(written[0]).read_text()
    assert "# skipped worker-testhost-9.bin: cannot be read" in text


def test_memray_missing_is_a_clear_error(tmp_path, monkeypatch):
    directory = tmp_path / "profiling" / "memray"
    directory.mkdir(parents=True)
    (directory / "worker-testhost-1.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "memray", None)  # import memray raises ImportError
    with pytest.raises(OrchestrixError) as info:
        summarize_memray(tmp_path)
    assert str(info.value) == (
        "profiling mode 'memray' needs the memray package: "
        "python -m pip install 'orchestrix[profiling]'"
    )
    assert str(info.value) == MEMRAY_MISSING


# The files as a worker elsewhere would have them: same package layout, another prefix.
EXECUTE = "/x/src/" + call_task.__module__.replace(".", "/") + ".py"
GRAPH = "/x/src/" + map_nested.__module__.replace(".", "/") + ".py"


@pytest.mark.parametrize(
    ("stack", "task"),
    [
        (
            [("f", "/a/m.py", 3), ("call_task", EXECUTE, 9), ("run_unit", EXECUTE, 5)],
            ("f", "/a/m.py"),
        ),
        # a helper of execute.py between call_task and the task
        (
            [("f", "/a/m.py", 3), ("call_node", EXECUTE, 9), ("call_task", EXECUTE, 5)],
            ("f", "/a/m.py"),
        ),
        # what the task calls is the task's; a nested call_task counts for the outer task
        (
            [
                ("g", "/a/m.py", 1),
                ("call_task", EXECUTE, 9),
                ("f", "/a/m.py", 3),
                ("call_task", EXECUTE, 9),
            ],
            ("f", "/a/m.py"),
        ),
        ([("call_task", EXECUTE, 9), ("run_unit", EXECUTE, 5)], (C_TASKS, "")),
        (
            [("map_nested", GRAPH, 9), ("resolve", EXECUTE, 4), ("call_task", EXECUTE, 2)],
            (OUTSIDE_TASKS, ""),
        ),
        ([("f", "/a/m.py", 3), ("<module>", "/a/main.py", 1)], (OUTSIDE_TASKS, "")),
        ([], (OUTSIDE_TASKS, "")),
    ],
)
def test_task_of_a_stack(stack, task):
    assert _task_of(stack) == task


# -- command line -------------------------------------------------------------------------------


def test_cli_profile_prints_the_paths_written(tmp_path, capsys):
    _write_cprofiles(tmp_path)
    assert main(["profile", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [str(tmp_path / "profiling" / "cprofile_summary.txt")]


def test_cli_profile_with_memray(memray_run, capsys):
    out_dir, written = memray_run
    assert main(["profile", str(out_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == written


def test_cli_profile_without_profiles(tmp_path, capsys):
    assert main(["profile", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("orchestrix: OrchestrixError: no profiles found: looked for ")
    assert str(tmp_path / "profiling" / "cprofile" / "*.prof") in err
    assert str(tmp_path / "profiling" / "memray" / "*.bin") in err
