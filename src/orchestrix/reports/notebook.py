"""What Jupyter shows for an orchestrator (its ``_repr_html_``): mode, workers, where things are."""

from __future__ import annotations

import html
from typing import Any

from ..monitoring.monitor import RunSummary

__all__ = ["orchestrator_table"]


def orchestrator_table(
    config: Any,
    closed: bool,
    summary: RunSummary,
    running: int,
    dump_dir: str | None,
    dashboard_link: str | None,
) -> str:
    """An HTML table of the orchestrator's state, its tasks so far and its workers' memory."""
    rows = [("mode", config.mode), ("state", "closed" if closed else "open")]
    for key in ("nb_workers", "max_ram_per_worker", "out_dir"):
        value = getattr(config, key, None)
        if value is not None:
            suffix = " MB per worker" if key == "max_ram_per_worker" else ""
            rows.append((key, f"{value}{suffix}"))
    if dump_dir:
        rows.append(("dump_dir", dump_dir))
    done, failed = summary.tasks_done, summary.tasks_failed
    rows.append(("tasks", f"{done} done, {running} running, {failed} failed"))
    for worker, facts in summary.workers.items():
        if facts["peak_rss_mb"] is not None:
            rows.append((f"worker {worker}", f"peak RSS {facts['peak_rss_mb']:,.0f} MB"))
    cells = [_row(key, html.escape(str(value))) for key, value in rows]
    if dashboard_link:
        escaped = html.escape(dashboard_link)
        cells.append(_row("dashboard", f"<a href='{escaped}' target='_blank'>{escaped}</a>"))
    return f"<table><caption>orchestrix Orchestrator</caption>{''.join(cells)}</table>"


def _row(key: str, cell_html: str) -> str:
    return f"<tr><th style='text-align:left'>{html.escape(key)}</th><td>{cell_html}</td></tr>"
