"""Summaries of the profiles the workers wrote (see :mod:`orchestrix.worker.observe`).

``out_dir/profiling/cprofile/*.prof`` (one per worker) are merged into one ranked text file;
``out_dir/profiling/memray/*.bin`` (one capture per worker) each get memray's flame graph, and
one text file gives the memory each task held at its worker's peak. Run after the workers ended:
at orchestrator close, or ``python -m orchestrix profile OUT_DIR``. Standard library only; memray
is imported when there are memray captures to read.
"""

from __future__ import annotations

import functools
import io
import os
import pstats
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OrchestrixError
from ..graph.tasks import map_nested
from ..worker.execute import call_task

__all__ = ["summarize_cprofile", "summarize_memray", "summarize_profiles"]

MEMRAY_MISSING = (
    "profiling mode 'memray' needs the memray package: "
    "python -m pip install 'orchestrix[profiling]'"
)
#: where memray's allocations that happened in no task go
OUTSIDE_TASKS = "(outside tasks)"
#: a task whose function has no Python frame (``ox.task(np.add)``): memray, without native
#: traces, sees the allocation in call_task itself and cannot tell which function it was
C_TASKS = "(tasks implemented in C)"
#: a flame graph can take long on a big capture, but must not hang the orchestrator's close
FLAMEGRAPH_TIMEOUT_S = 600


def _profiling_dir(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / "profiling"


# -- cProfile ----------------------------------------------------------------------------------


def summarize_cprofile(out_dir: str | os.PathLike[str], top: int = 40) -> str | None:
    """Merge the workers' cProfile files into ``out_dir/profiling/cprofile_summary.txt``.

    Returns its path, or None when there is no ``.prof`` file. A file that cannot be read (its
    worker was killed while writing it) is skipped, with a line saying so in the summary.
    """
    root = _profiling_dir(out_dir)
    paths = sorted((root / "cprofile").glob("*.prof"))
    if not paths:
        return None
    merged: pstats.Stats | None = None
    skipped: list[str] = []
    for path in paths:
        try:
            stats = pstats.Stats(str(path), stream=io.StringIO())
        except Exception as exc:  # noqa: BLE001 - marshal and pstats raise many kinds
            skipped.append(f"# skipped {path.name}: cannot be read ({type(exc).__name__}: {exc})")
            continue
        if merged is None:
            merged = stats
        else:
            merged.add(stats)
    merged_count = _count(len(paths) - len(skipped), "worker profile")
    lines = [f"# cProfile of the tasks: {merged_count} merged"]
    lines += skipped
    body = ""
    if merged is not None:
        # total_tt sums the time spent in every profiled function: profiling is enabled only
        # around task calls, so it is the tasks' profiled time, summed over the workers.
        profiled = merged.total_tt  # type: ignore[attr-defined]  # set by pstats, untyped
        lines.append(f"# tasks' profiled time: {profiled:.3f} s (summed over workers)")
        lines.append(f"# top {top} functions by cumulative time")
        text = io.StringIO()
        merged.stream = text  # type: ignore[attr-defined]  # pstats prints to .stream
        merged.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
        body = _shorten_paths(text.getvalue())
    summary = root / "cprofile_summary.txt"
    summary.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return str(summary)


def _shorten_paths(text: str) -> str:
    """Drop the import-path prefixes (site-packages, the stdlib, the project's src) from file
    names: ``numpy/_core/numeric.py`` reads better, and still names one file, unlike
    ``pstats.strip_dirs`` which merges distinct files of the same base name."""
    pattern = _import_prefixes(tuple(sys.path))
    return pattern.sub("", text) if pattern is not None else text


@functools.lru_cache(maxsize=4)
def _import_prefixes(import_path: tuple[str, ...]) -> re.Pattern[str] | None:
    prefixes = {os.path.abspath(entry or os.curdir) for entry in import_path}
    prefixes = {p.rstrip(os.sep) + os.sep for p in prefixes if os.path.dirname(p) != p}
    if not prefixes:
        return None
    # the longest prefix first: the regex takes the first alternative that matches
    ordered = sorted(prefixes, key=len, reverse=True)
    return re.compile("|".join(re.escape(p) for p in ordered))


# -- memray ------------------------------------------------------------------------------------


@dataclass
class _Capture:
    """What one worker's memray capture says."""

    worker: str
    peak: int = 0
    allocations: int = 0
    #: of the memory live at the peak, what mmap mapped: memray counts mapped files too (numpy
    #: memmaps of the inputs orchestrix passes between processes), though little is resident
    mapped: int = 0
    #: (function, file) of a task, or a label in parentheses -> bytes live at the worker's peak
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    flamegraph: str = ""  # the HTML file's name, "" when memray could not write it


def summarize_memray(out_dir: str | os.PathLike[str]) -> list[str]:
    """Write a flame graph next to each ``out_dir/profiling/memray/*.bin`` (same stem, ``.html``)
    and ``out_dir/profiling/memray_summary.txt``: the memory each task held at its worker's
    peak, and each worker's peak. Returns the paths written ([] when there is no capture).

    Raises :class:`OrchestrixError` when there are captures but memray is not installed.
    """
    root = _profiling_dir(out_dir)
    paths = sorted((root / "memray").glob("*.bin"))
    if not paths:
        return []
    memray = _import_memray()
    written: list[str] = []
    captures: list[_Capture] = []
    notes: list[str] = []
    for path in paths:
        try:
            captures.append(_read_capture(memray, path))
        except OSError as exc:  # memray's reader reports a damaged file as an OSError
            notes.append(f"# skipped {path.name}: cannot be read ({exc})")
            continue
        html, error = _flamegraph(path)
        if html is not None:
            written.append(html)
            captures[-1].flamegraph = os.path.basename(html)
        else:
            notes.append(f"# no flame graph for {path.name}: {error}")
    summary = root / "memray_summary.txt"
    text = _format_memray(captures, notes, root / "memray")
    summary.write_text(text, encoding="utf-8")
    return [str(summary), *written]


def _import_memray() -> Any:
    try:
        import memray
    except ImportError:  # also when sys.modules["memray"] is None
        raise OrchestrixError(MEMRAY_MISSING) from None
    return memray


def _read_capture(memray: Any, path: Path) -> _Capture:
    capture = _Capture(worker=path.stem)
    with memray.FileReader(str(path)) as reader:
        held = capture.held
        mmap = memray.AllocatorType.MMAP
        records = reader.get_high_watermark_allocation_records(merge_threads=True)
        for record in records:
            task = _task_of(record.stack_trace())
            held[task] = held.get(task, 0) + record.size
            if record.allocator == mmap:
                capture.mapped += record.size
        meta = reader.metadata
        # a capture whose worker was killed may lack the final statistics: the peak is then
        # at least what was live at the high-water mark
        capture.peak = meta.peak_memory or sum(held.values())
        capture.allocations = meta.total_allocations
    return capture


def _file_ending(module_name: str) -> tuple[str, ...]:
    """The last parts of the path of a module's file: ``a.b.c`` ends with ``a/b/c.py``."""
    *package, leaf = module_name.split(".")
    return (*package, f"{leaf}.py")


# Where memray finds the frames that call tasks and resolve their arguments: read from the
# functions themselves, so that moving a module cannot silently break the attribution.
_CALLER_FILE = _file_ending(call_task.__module__)
_RESOLVER_FILE = _file_ending(map_nested.__module__)


def _in_file(filename: str, ending: tuple[str, ...]) -> bool:
    return Path(filename).parts[-len(ending) :] == ending


def _task_of(stack: Sequence[tuple[str, str, int]]) -> tuple[str, str]:
    """The task an allocation happened in, from its Python stack (innermost frame first).

    Every task function is called, directly or through helpers of its module, by
    :func:`~orchestrix.worker.execute.call_task`: the task is the first frame inside the outermost
    ``call_task`` that is not in that module. Argument resolution (``map_nested``) is
    orchestrix's, not the task's.
    """
    outer = next(
        (
            depth
            for depth in range(len(stack) - 1, -1, -1)
            if stack[depth][0] == call_task.__name__ and _in_file(stack[depth][1], _CALLER_FILE)
        ),
        None,
    )
    if outer is None:
        return (OUTSIDE_TASKS, "")
    for function, filename, _line in reversed(stack[:outer]):
        if _in_file(filename, _CALLER_FILE):
            continue
        if _in_file(filename, _RESOLVER_FILE):
            return (OUTSIDE_TASKS, "")
        return (function, filename)
    # the allocation happened in call_task itself: the task was a C function
    return (C_TASKS, "") if stack[0][0] == call_task.__name__ else (OUTSIDE_TASKS, "")


def _flamegraph(capture: Path) -> tuple[str | None, str]:
    """Run ``memray flamegraph`` on a capture: (the HTML path, "") or (None, why not).

    memray's command line is its documented interface (its reporter classes are internal and
    their signatures change between versions), and a child process keeps a crash or the memory
    of a huge capture out of the process that summarizes (the orchestrator's caller).
    """
    html = capture.with_suffix(".html")
    command = [sys.executable, "-m", "memray", "flamegraph", "-f", "-o", str(html), str(capture)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=FLAMEGRAPH_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if done.returncode != 0 or not html.exists():
        lines = (done.stderr or done.stdout).strip().splitlines()
        return None, (lines[-1] if lines else f"memray exited with code {done.returncode}")
    return str(html), ""


def _format_memray(captures: list[_Capture], notes: list[str], where: Path) -> str:
    lines = [f"# memray: {_count(len(captures), 'worker capture')} in {where}", *notes, ""]
    lines += _task_table(captures)
    lines.append("")
    lines.append("per worker: memray's peak (heap and mmap), its mmap part, allocations made:")
    lines.append(f"{'peak':>12}  {'mmap':>12}  {'allocations':>12}  worker")
    for capture in sorted(captures, key=lambda c: (-c.peak, c.worker)):
        graph = f"  ({capture.flamegraph})" if capture.flamegraph else ""
        lines.append(
            f"{_human(capture.peak):>12}  {_human(capture.mapped):>12}"
            f"  {capture.allocations:>12,}  {capture.worker}{graph}"
        )
    return "\n".join(lines) + "\n"


def _task_table(captures: Iterable[_Capture]) -> list[str]:
    """Per task: the largest memory it held at a worker's peak, and in how many workers' peaks
    it held some."""
    largest: dict[tuple[str, str], int] = {}
    workers: dict[tuple[str, str], int] = {}
    for capture in captures:
        for task, size in capture.held.items():
            largest[task] = max(largest.get(task, 0), size)
            workers[task] = workers.get(task, 0) + 1
    lines = [
        "per task: memory held at a worker's peak (the largest), in how many workers' peaks:",
        f"{'held':>12}  {'workers':>7}  task  (file)",
    ]
    for task in sorted(largest, key=lambda t: (-largest[t], t)):
        function, filename = task
        where = f"  ({_shorten_paths(filename)})" if filename else ""
        lines.append(f"{_human(largest[task]):>12}  {workers[task]:>7}  {function}{where}")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _human(size: float) -> str:
    """``52428800`` -> ``50.0 MiB`` (binary units, as memray prints them)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while abs(size) >= 1024 and power < len(units) - 1:
        size /= 1024
        power += 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"


# -- both --------------------------------------------------------------------------------------


def summarize_profiles(out_dir: str | os.PathLike[str], top: int = 40) -> list[str]:
    """Both summaries, for whatever profiles ``out_dir`` holds; the paths written.

    Raises :class:`OrchestrixError` when it holds none, saying where it looked.
    """
    written: list[str] = []
    cprofile = summarize_cprofile(out_dir, top=top)
    if cprofile is not None:
        written.append(cprofile)
    written += summarize_memray(out_dir)
    if not written:
        root = _profiling_dir(out_dir)
        missing = "" if Path(out_dir).is_dir() else f" ({out_dir} is not a directory)"
        raise OrchestrixError(
            f"no profiles found: looked for {root / 'cprofile' / '*.prof'} and "
            f"{root / 'memray' / '*.bin'}{missing}"
        )
    return written
