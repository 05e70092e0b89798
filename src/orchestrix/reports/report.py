"""A self-contained HTML report of one run, from the data of ``OUT_DIR/run.json``.

One file that works offline and can be mailed around: CSS inline, charts drawn here as inline SVG,
one small inline script (sortable tables), and a Content-Security-Policy that forbids every fetch
and every other script. Standard library only: the report must render wherever orchestrix's core
is installed, e.g. on a laptop reading a cluster run's ``out_dir``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import OrchestrixError
from .charts import (
    DASH,
    _esc,
    _fmt_count,
    _fmt_mb,
    _fmt_s,
    _histograms,
    _is_number,
    _memory,
    _name_colors,
    _number,
    _timeline,
)

RUN_FILE = "run.json"
MAX_FAILURE_ROWS = 500
TASK_COLUMNS = ("key", "name", "worker", "start", "wall", "cpu", "peak_rss_mb", "ok")

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:0 24px 48px;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
nav a{margin-right:12px}.facts{display:flex;flex-wrap:wrap;gap:8px 28px;margin:12px 0}
.facts div{display:flex;flex-direction:column}.facts b{font-size:18px}.bad{color:#d40000}
svg.chart{display:block;max-width:100%;height:auto}svg text{font-size:11px;fill:#333}
.grid{stroke:#e4e4e4}.note{color:#666;font-style:italic}figure{margin:0;width:320px}
.legend,.hists{display:flex;flex-wrap:wrap;gap:4px 14px;margin:6px 0;font-size:12px}
.sw{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
figcaption,code{overflow-wrap:anywhere}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right}th{background:#f4f4f4;cursor:pointer}pre{white-space:pre-wrap;margin:4px 0}
"""

# Sorts a table by the clicked column, numbers by the raw value in their data-v.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  function value(row, i) {
    var raw = row.cells[i].getAttribute("data-v");
    return raw === null ? row.cells[i].textContent : parseFloat(raw);
  }
  table.tHead.addEventListener("click", function (event) {
    var th = event.target.closest("th"), body = table.tBodies[0], i = th.cellIndex;
    var order = th.getAttribute("data-order") === "asc" ? -1 : 1;
    th.setAttribute("data-order", order > 0 ? "asc" : "desc");
    Array.from(body.rows).sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      return (x < y ? -1 : x > y ? 1 : 0) * order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

# No fetch of any kind, and no script but ours (by its hash): a name that slipped through the
# escaping still could not run. Inline styles are allowed (the legend swatches' colours).
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'"


def load_run_data(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The data of ``OUT_DIR/run.json``."""
    path = os.path.join(out_dir, RUN_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        message = f"{path} not found: it is written when an Orchestrator with out_dir closes"
        raise OrchestrixError(message) from None
    except (OSError, ValueError) as exc:  # one line, as the CLI prints it
        raise OrchestrixError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise OrchestrixError(f"{path} does not hold a JSON object")
    return data


def write_report(data: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Writes the report to ``path`` atomically (a reader never sees half a file); returns it."""
    path = os.fspath(path)
    document = render_report(data)
    fd, temp = tempfile.mkstemp(".html", ".report-", os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(document)
        os.chmod(temp, 0o644)  # not mkstemp's 0600: the report is for the whole team to read
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path


def render_report(data: Mapping[str, Any]) -> str:
    """One self-contained HTML document describing the run in ``data`` (see ``run.json``)."""
    tasks = _columns(data.get("tasks") or {}, TASK_COLUMNS)
    memory = _columns(data.get("memory") or {}, ("worker", "time", "rss_mb"))
    summary = data.get("summary") or {}
    starts = [s for s in tasks["start"] if _is_number(s)]
    t0 = _number(data.get("started"), min(starts, default=0.0))
    walls = zip(tasks["start"], tasks["wall"], strict=True)
    ends = [s + _number(w, 0) for s, w in walls if _is_number(s)]
    ends += [t for t in memory["time"] if _is_number(t)]
    span = max([_number(data.get("ended"), t0), *ends]) - t0
    span = span if span > 0 else 1.0
    colors = _name_colors(tasks)
    sections = [
        ("timeline", "Tasks per worker", _timeline(tasks, t0, span, colors)),
        ("memory", "Memory per worker", _memory(memory, t0, span)),
        ("durations", "Task durations", _histograms(tasks, colors)),
        ("tables", "Summary tables", _tables(summary)),
        ("failures", "Failures", _failures(data.get("failures") or [])),
    ]
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "".join(f'<h2 id="{key}">{title}</h2>{content}' for key, title, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>orchestrix run report</title><style>{_CSS}</style></head><body>"
        f"<h1>orchestrix run report</h1><nav>{nav}</nav>{_header(data, summary, tasks)}{body}"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _columns(table: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, list[Any]]:
    """Equal-length columns: a missing one is all None, longer ones are cut to the shortest (a
    report of damaged data beats a traceback). Labels are strings: they key dictionaries."""
    present = [table[n] for n in names if isinstance(table.get(n), list)]
    length = min(map(len, present), default=0)
    columns = {
        n: list(table[n][:length]) if isinstance(table.get(n), list) else [None] * length
        for n in names
    }
    for label in {"key", "name", "worker"} & set(names):
        columns[label] = ["?" if v is None else str(v) for v in columns[label]]
    return columns


def _header(data: Mapping[str, Any], summary: Mapping[str, Any], tasks: dict[str, list]) -> str:
    started = data.get("started")
    when = datetime.fromtimestamp(_number(started, 0)).astimezone().isoformat(" ", "seconds")
    wall = summary.get("wall_seconds", _number(data.get("ended"), math.nan) - _number(started, 0))
    failed = summary.get("tasks_failed", tasks["ok"].count(False))
    workers, throughput = data.get("nb_workers"), _number(summary.get("throughput_per_s"), -1)
    facts = [
        ("mode", _esc(data.get("mode", "?"))),
        ("workers", "none (in process)" if workers is None else _esc(workers)),
        ("started", _esc(when) if _is_number(started) else DASH),
        ("wall time", _fmt_s(wall)),
        ("tasks done", _esc(summary.get("tasks_done", tasks["ok"].count(True)))),
        ("failed", f'<span class="{"bad" if failed else ""}">{_esc(failed)}</span>'),
        ("retried", _esc(summary.get("tasks_retried", 0))),
        ("throughput", f"{_fmt_count(throughput)} tasks/s" if throughput >= 0 else DASH),
    ]
    cells = "".join(f"<div>{label}<b>{value}</b></div>" for label, value in facts)
    return f'<div class="facts" id="summary">{cells}</div>'


def _text_td(text: Any) -> str:
    return f"<td>{_esc(text)}</td>"


def _num_td(text: str, raw: Any) -> str:
    """A numeric cell: it sorts by its raw value (a missing value sorts first)."""
    return f'<td class="n" data-v="{raw if _is_number(raw) else "-Infinity"}">{text}</td>'


def _s_td(value: Any) -> str:
    return _num_td(_fmt_s(value), value)


def _mb_td(value: Any) -> str:
    return _num_td(_fmt_mb(value), value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _tables(summary: Mapping[str, Any]) -> str:
    by_name = summary.get("by_name") or {}
    if not by_name:
        return '<p class="note">no tasks recorded</p>'
    rows = [
        [_text_td(name), _num_td(f"{s.get('count', 0):,}", s.get("count"))]
        + [_s_td(s.get(key)) for key in ("mean_s", "median_s", "p95_s", "total_s")]
        + [_mb_td(s.get("max_peak_rss_mb"))]
        for name, s in sorted(by_name.items(), key=lambda item: -_number(item[1].get("total_s"), 0))
    ]
    headers = ["task name", "count", "mean", "median", "p95", "total", "max peak RSS"]
    parts = ["<h3>Per task name</h3>", _table(headers, rows), "<h3>Per worker</h3>"]
    workers = sorted((summary.get("workers") or {}).items())
    rows = [
        [
            _text_td(worker),
            _num_td(f"{w.get('tasks', 0):,}", w.get("tasks")),
            _mb_td(w.get("peak_rss_mb")),
        ]
        for worker, w in workers
    ]
    parts.append(_table(["worker", "tasks", "peak RSS"], rows))
    leaks = summary.get("leaks") or {}
    if leaks:
        rows = [
            [
                _text_td(name),
                _mb_td(leak.get("growth_mb_per_run")),
                _num_td(_esc(leak.get("runs")), leak.get("runs")),
            ]
            for name, leak in leaks.items()
        ]
        parts.append("<h3>Possible leaks: worker memory growth per run of a task</h3>")
        parts.append(_table(["task name", "growth per run", "runs"], rows))
    return "".join(parts)


def _failures(failures: list[Mapping[str, Any]]) -> str:
    if not failures:
        return '<p class="note">no failures</p>'
    rows = []
    for failure in failures[:MAX_FAILURE_ROWS]:
        trace = failure.get("traceback")
        cells = (
            _esc(failure.get("name", "?")),
            f"<code>{_esc(failure.get('key', '?'))}</code>",
            _esc(failure.get("worker") or DASH),
            f"<code>{_esc(failure.get('inputs') or DASH)}</code>",
            f"<code>{_esc(failure.get('error', ''))}</code>",
            f"<details><summary>traceback</summary><pre>{_esc(trace)}</pre></details>"
            if trace
            else DASH,
        )
        rows.append([f"<td>{cell}</td>" for cell in cells])  # cells already escaped
    table = _table(["task name", "key", "worker", "call", "error", "traceback"], rows)
    rest = len(failures) - MAX_FAILURE_ROWS
    return table + (f'<p class="note">{rest:,} more failures not shown.</p>' if rest > 0 else "")
