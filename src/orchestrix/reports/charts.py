"""The charts of the run report, drawn as inline SVG: the timeline of tasks per worker, memory
per worker over time and the histograms of task durations (with the formatting they share)."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

MAX_RECTS = 20_000  # timeline bars: beyond this a browser gets slow and the file heavy
TOP_HISTOGRAMS = 12
PLOT_W = 1000  # plot width in px (the viewBox scales with the page)
PALETTE = (
    "#3b6fb6", "#e08a2c", "#3f9e4d", "#8c5bb5", "#c9b33a", "#2ba6a6",
    "#b35a8f", "#7d6a4f", "#5b8c2a", "#d0683f", "#4a4fa3", "#9a9a3a",
)  # fmt: skip
OTHER = "#a8a8a8"  # the task names past the palette share it
FAILED = "#d40000"
DASH = "\u2014"  # a missing value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, default: float) -> float:
    return float(value) if _is_number(value) else default


def _name_colors(tasks: dict[str, list[Any]]) -> dict[str, str]:
    """The names with the most total time get the palette's distinct colours, in order."""
    total: dict[str, float] = defaultdict(float)
    for name, wall in zip(tasks["name"], tasks["wall"], strict=True):
        total[name] += _number(wall, 0)
    ranked = sorted(total, key=lambda name: (-total[name], name))
    return {name: PALETTE[i] if i < len(PALETTE) else OTHER for i, name in enumerate(ranked)}


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest rank, as the run summary computes it: the panels agree with the tables."""
    return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_s(value: Any) -> str:
    if not _is_number(value):
        return DASH
    # 4 significant digits: below 10**4 the "g" format never switches to an exponent
    if value < 1e-3:
        return f"{value * 1e6:.4g} \u00b5s"
    if value < 1:
        return f"{value * 1e3:.4g} ms"
    if value < 120:
        return f"{value:.4g} s"
    return f"{value / 60:.4g} min" if value < 7200 else f"{value / 3600:.4g} h"


def _fmt_count(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"  # never an exponent


def _fmt_mb(value: Any) -> str:
    return f"{value:,.1f} MB" if _is_number(value) else DASH


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / count if hi > lo else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _legend(items: list[tuple[str, str]], more: str = "") -> str:
    spans = [f'<span><i class="sw" style="background:{c}"></i>{_esc(n)}</span>' for n, c in items]
    return f'<div class="legend">{"".join(spans)}{f"<span>{more}</span>" if more else ""}</div>'


def _svg(kind: str, width: float, height: float, content: str) -> str:
    return (
        f'<svg class="chart" data-chart="{kind}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img">{content}</svg>'
    )


def _x_axis(top: float, height: float, ticks: list[tuple[float, str]]) -> str:
    """Vertical grid lines labelled under the plot; ``ticks`` are (x in px, label)."""
    return "".join(
        f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}"/>'
        f'<text x="{x:.1f}" y="{top + height + 13}" text-anchor="middle">{label}</text>'
        for x, label in ticks
    )


def _y_axis(left: float, width: float, ticks: list[tuple[float, str]]) -> str:
    return "".join(
        f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}"/>'
        f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        for y, label in ticks
    )


def _time_chart(kind: str, left: float, height: float, span: float, content: str) -> str:
    """A chart over the run's time: seconds since start on x, plot ``PLOT_W`` wide from
    ``left``, ``height`` tall from y=8."""
    ticks = [(left + t * PLOT_W / span, f"{t:g}") for t in _ticks(0, span)]
    label = (
        f'<text x="{left + PLOT_W / 2}" y="{height + 38}" text-anchor="middle">'
        "seconds since start</text>"
    )
    return _svg(kind, left + PLOT_W + 20, height + 46, _x_axis(8, height, ticks) + content + label)


class _Bar:
    """A bar of the timeline: one task, or neighbouring tasks merged to keep the file light."""

    __slots__ = ("count", "end", "failed", "index", "names", "start")

    def __init__(self, index: int, start: float, wall: float, name: str, failed: bool) -> None:
        self.index, self.start, self.end = index, start, start + wall
        self.names = {name: wall}  # time per name: a merged bar takes the top one's colour
        self.count, self.failed = 1, int(failed)

    def absorb(self, other: _Bar) -> None:
        self.end = max(self.end, other.end)
        for name, wall in other.names.items():
            self.names[name] = self.names.get(name, 0.0) + wall
        self.count += other.count
        self.failed += other.failed


def _merge(bars: list[_Bar], joins: Callable[[_Bar, _Bar], bool]) -> list[_Bar]:
    """Bars (sorted by start), each absorbed into the one before when ``joins(before, bar)``."""
    merged: list[_Bar] = []
    for bar in bars:
        if merged and joins(merged[-1], bar):
            merged[-1].absorb(bar)
        else:
            merged.append(bar)
    return merged


def _bounded(rows: dict[str, list[_Bar]], span: float) -> tuple[dict[str, list[_Bar]], str]:
    """At most MAX_RECTS bars. First, same-name tasks in a row less than a pixel apart become
    one bar: nothing visible is lost. If that is not enough, the tasks starting in the same
    column of 1, 2, 4... pixels become one bar, coloured by its name with the most time: name
    changes stay visible at that resolution, and a row holds at most PLOT_W / width bars."""
    total = sum(map(len, rows.values()))
    if total <= MAX_RECTS:
        return rows, f"{total:,} task{'s' * (total != 1)}, one bar each."
    pixel = span / PLOT_W

    def same_name(last: _Bar, bar: _Bar) -> bool:
        return bar.start - last.end < pixel and last.names.keys() == bar.names.keys()

    rows = {worker: _merge(bars, same_name) for worker, bars in rows.items()}
    how = f"tasks of one name in a row less than a pixel ({_fmt_s(pixel)}) apart were merged"
    width = 1
    while sum(map(len, rows.values())) > MAX_RECTS and width <= PLOT_W:
        column = width * pixel

        def same_column(last: _Bar, bar: _Bar, column: float = column) -> bool:
            return int(last.start / column) == int(bar.start / column)

        rows = {worker: _merge(bars, same_column) for worker, bars in rows.items()}
        how = f"tasks starting in the same {width}-pixel column ({_fmt_s(column)}) were merged"
        width *= 2
    drawn = sum(map(len, rows.values()))
    return rows, (
        f"{total:,} tasks drawn as {drawn:,} bars: on each worker, {how} (a bar has the colour "
        "of its name with the most time; hover for what it holds)."
    )


def _tooltip(bar: _Bar, tasks: dict[str, list]) -> str:
    if bar.count == 1:
        i = bar.index
        lines = [
            tasks["name"][i],
            f"key: {tasks['key'][i]}",
            f"wall: {_fmt_s(tasks['wall'][i])}, cpu: {_fmt_s(tasks['cpu'][i])}",
            f"peak RSS: {_fmt_mb(tasks['peak_rss_mb'][i])}",
        ] + ["FAILED"] * bar.failed
    else:
        top = sorted(bar.names.items(), key=lambda item: -item[1])
        lines = [f"{bar.count:,} tasks merged ({bar.failed} failed)"]
        lines += [f"{name}: {_fmt_s(wall)}" for name, wall in top[:5]]
        lines += [f"and {len(top) - 5} more names"] if len(top) > 5 else []
    return _esc("\n".join(lines))


def _timeline(tasks: dict[str, list], t0: float, span: float, colors: dict[str, str]) -> str:
    rows: dict[str, list[_Bar]] = defaultdict(list)
    for i, start in enumerate(tasks["start"]):
        if _is_number(start):
            wall = max(_number(tasks["wall"][i], 0), 0.0)
            bar = _Bar(i, start - t0, wall, tasks["name"][i], tasks["ok"][i] is False)
            rows[tasks["worker"][i]].append(bar)
    if not rows:
        return '<p class="note">no tasks recorded</p>'
    for bars in rows.values():
        bars.sort(key=lambda bar: bar.start)
    rows, note = _bounded(dict(sorted(rows.items())), span)
    left, row_h = 150, max(2, min(20, 640 // len(rows)))  # many workers: thinner rows
    label_every = math.ceil(10 / row_h)  # worker labels must not overlap
    scale = PLOT_W / span
    parts = []
    for r, (worker, bars) in enumerate(rows.items()):
        y = 8 + r * row_h
        if r % label_every == 0:
            label = worker if len(worker) <= 22 else worker[:21] + "\u2026"
            parts.append(
                f'<text x="{left - 6}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
                f"{_esc(label)}<title>{_esc(worker)}</title></text>"
            )
        for bar in bars:
            fill = colors[max(bar.names, key=bar.names.__getitem__)]
            outline = f' stroke="{FAILED}" stroke-width="1.5"' if bar.failed else ""
            width = max(0.8, (bar.end - bar.start) * scale)
            parts.append(
                f'<rect x="{left + bar.start * scale:.2f}" y="{y + 1}" width="{width:.2f}" '
                f'height="{max(1, row_h - 2)}" fill="{fill}"{outline}>'
                f"<title>{_tooltip(bar, tasks)}</title></rect>"
            )
    chart = _time_chart("timeline", left, row_h * len(rows), span, "".join(parts))
    named = [(name, color) for name, color in colors.items() if color != OTHER]
    others = len(colors) - len(named)
    legend = _legend(named, f"grey: {others} other names" if others else "")
    return f'{chart}<p class="note">{note} Failed tasks are outlined in red.</p>{legend}'


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most two points per pixel, each the highest of its stretch: a line stays light and
    keeps its peaks (run.json holds a few thousand samples per worker; other data may not)."""
    step = math.ceil(len(points) / (2 * PLOT_W))
    if step <= 1:
        return points
    return [max(points[i : i + step], key=lambda p: p[1]) for i in range(0, len(points), step)]


def _memory(memory: dict[str, list], t0: float, span: float) -> str:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for worker, when, rss in zip(memory["worker"], memory["time"], memory["rss_mb"], strict=True):
        if _is_number(when) and _is_number(rss):
            series[worker].append((when - t0, rss))
    if not series:
        return '<p class="note">no memory samples recorded</p>'
    left, height = 70, 260
    peak = max(rss for points in series.values() for _, rss in points)
    y_max = peak * 1.08 if peak > 0 else 1.0
    x_scale, y_scale = PLOT_W / span, height / y_max
    y_ticks = [(8 + height - v * y_scale, f"{v:g}") for v in _ticks(0, y_max, 5) if v <= y_max]
    parts = [_y_axis(left, PLOT_W, y_ticks)]
    parts.append(f'<text transform="translate(16 {8 + height / 2}) rotate(-90)">RSS (MB)</text>')
    legend = []
    for i, (worker, points) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        points.sort()
        coords = " ".join(
            f"{left + t * x_scale:.1f},{8 + height - rss * y_scale:.1f}" for t, rss in _thin(points)
        )
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5">'
            f"<title>{_esc(worker)}: peak {_fmt_mb(max(p[1] for p in points))}</title></polyline>"
        )
        legend.append((worker, color))
    more = f"and {len(legend) - 40} more workers" if len(legend) > 40 else ""
    return _time_chart("memory", left, height, span, "".join(parts)) + _legend(legend[:40], more)


def _histograms(tasks: dict[str, list], colors: dict[str, str]) -> str:
    walls: dict[str, list[float]] = defaultdict(list)
    for name, wall, ok in zip(tasks["name"], tasks["wall"], tasks["ok"], strict=True):
        if ok is not False and _is_number(wall) and wall >= 0:
            walls[name].append(wall)  # successful tasks only, as in the summary table
    if not walls:
        return '<p class="note">no tasks recorded</p>'
    ranked = sorted(walls, key=lambda name: (-math.fsum(walls[name]), name))
    shown = ranked[:TOP_HISTOGRAMS]
    panels = "".join(_histogram(name, sorted(walls[name]), colors[name]) for name in shown)
    rest = len(ranked) - len(shown)
    note = f'<p class="note">{rest} more task names not shown.</p>' if rest else ""
    return f'<p class="note">Top names by total time.</p><div class="hists">{panels}</div>{note}'


def _histogram(name: str, values: list[float], color: str) -> str:
    lo, hi = values[0], values[-1]
    smallest = next((v for v in values if v > 0), 0.0)
    log = smallest > 0 and hi / smallest > 100  # over 2 decades: linear bins hide the small ones
    bins = max(5, min(30, round(math.sqrt(len(values)))))
    position: Callable[[float], float]  # a value's fraction of the x axis
    if log:
        a, b = math.log10(smallest), math.log10(hi)
        position = lambda v: (math.log10(max(v, smallest)) - a) / (b - a)  # noqa: E731
        ticks = [10.0**k for k in range(math.ceil(a), math.floor(b) + 1)]
    else:
        width = hi - lo or max(abs(hi), 1e-9)  # all equal: one full bin, not a division by 0
        position = lambda v: (v - lo) / width  # noqa: E731
        ticks = [t for t in _ticks(lo, lo + width, 3) if lo <= t <= lo + width]
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int(position(value) * bins))] += 1
    left, w, h, most = 44, 262, 110, max(counts)
    parts = [_y_axis(left, w, [(8 + h - h * c / most, str(c)) for c in {0, most}])]
    parts.append(_x_axis(8, h, [(left + w * position(t), _fmt_s(t)) for t in ticks]))
    for i, count in enumerate(counts):
        if count:
            parts.append(
                f'<rect x="{left + i * w / bins + 0.5:.1f}" y="{8 + h - h * count / most:.1f}" '
                f'width="{max(w / bins - 1, 0.5):.1f}" height="{h * count / most:.1f}" '
                f'fill="{color}"><title>{count} tasks</title></rect>'
            )
    caption = (
        f"<b>{_esc(name)}</b><br>n={len(values):,}, mean {_fmt_s(math.fsum(values) / len(values))}"
        f", median {_fmt_s(_percentile(values, 50))}, p95 {_fmt_s(_percentile(values, 95))}"
        f" ({'log' if log else 'linear'} bins)"
    )
    chart = _svg("histogram", 320, 140, "".join(parts))
    return f"<figure><figcaption>{caption}</figcaption>{chart}</figure>"
