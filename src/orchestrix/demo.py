"""``python -m orchestrix demo``: a synthetic raster cut into tiles, each processed by a chain of
tasks, reduced to a summary. It shows the whole API on a realistic shape of work."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .graph.tasks import task
from .orchestrator import Orchestrator


@dataclass(frozen=True)
class Window:
    row: int
    col: int
    height: int
    width: int


def terrain(window: Window, margin: int = 1) -> np.ndarray:
    """Elevation of a synthetic landscape over ``window`` grown by ``margin`` pixels."""
    rows = np.arange(window.row - margin, window.row + window.height + margin, dtype=np.float64)
    cols = np.arange(window.col - margin, window.col + window.width + margin, dtype=np.float64)
    y, x = np.meshgrid(rows, cols, indexing="ij")
    hills = 120.0 * np.sin(x / 97.0) * np.cos(y / 131.0) + 40.0 * np.sin((x + y) / 23.0)
    return (800.0 + hills + 0.00005 * x * y).astype(np.float32)


@task
def load_tile(window: Window) -> np.ndarray:
    return terrain(window)


@task
def smooth(elevation: np.ndarray) -> np.ndarray:
    """3x3 mean filter; keeps the 1-pixel margin's worth of neighbours, drops the margin."""
    padded = elevation.astype(np.float64)
    height, width = padded.shape
    total = np.zeros((height - 2, width - 2))
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total += padded[dy : height - 2 + dy, dx : width - 2 + dx]
    return (total / 9.0).astype(np.float32)


@task(nout=2)
def slope(elevation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope magnitude, and the smoothed tile itself, as two outputs."""
    dy, dx = np.gradient(elevation.astype(np.float64))
    return np.hypot(dx, dy).astype(np.float32), elevation


@task
def tile_stats(slopes: np.ndarray, elevation: np.ndarray) -> dict[str, float]:
    return {
        "pixels": float(elevation.size),
        "sum": float(elevation.sum(dtype=np.float64)),
        "min": float(elevation.min()),
        "max": float(elevation.max()),
        "slope_sum": float(slopes.sum(dtype=np.float64)),
        "steep": float((slopes > 2.0).sum()),
    }


@task
def merge(stats: list[dict[str, float]]) -> dict[str, float]:
    pixels = sum(s["pixels"] for s in stats)
    return {
        "tiles": float(len(stats)),
        "mean_elevation": sum(s["sum"] for s in stats) / pixels,
        "min_elevation": min(s["min"] for s in stats),
        "max_elevation": max(s["max"] for s in stats),
        "mean_slope": sum(s["slope_sum"] for s in stats) / pixels,
        "steep_fraction": sum(s["steep"] for s in stats) / pixels,
    }


def windows(size: int, tile: int) -> list[Window]:
    return [
        Window(row, col, min(tile, size - row), min(tile, size - col))
        for row in range(0, size, tile)
        for col in range(0, size, tile)
    ]


def build(size: int, tile: int) -> Any:
    per_tile = []
    for window in windows(size, tile):
        slopes, elevation = slope(smooth(load_tile(window)))
        per_tile.append(tile_stats(slopes, elevation))
    return merge(per_tile)


def run_demo(size: int = 2048, tile: int = 256, **options: Any) -> dict[str, Any]:
    """Run the demo; return the summary with timing and the orchestrator's mode."""
    start = time.perf_counter()
    with Orchestrator(**options) as orch:
        summary = orch.compute(build(size, tile))
        workers = getattr(orch.config, "nb_workers", None)
        mode = orch.config.mode if workers is None else f"{orch.config.mode}, {workers} workers"
    summary["wall_seconds"] = time.perf_counter() - start
    summary["mode"] = mode
    summary["tasks"] = 4 * len(windows(size, tile)) + 1
    return summary


def format_summary(summary: dict[str, Any], size: int, tile: int) -> str:
    return "\n".join(
        [
            f"orchestrix demo: {size}x{size} raster, {int(summary['tiles'])} tiles of "
            f"{tile}x{tile}, {summary['tasks']} tasks, mode {summary['mode']}",
            f"  elevation  mean {summary['mean_elevation']:.2f} m, "
            f"range {summary['min_elevation']:.1f} .. {summary['max_elevation']:.1f} m",
            f"  slope      mean {summary['mean_slope']:.4f}, "
            f"steep (> 2) {100 * summary['steep_fraction']:.2f}% of pixels",
            f"  wall time  {summary['wall_seconds']:.2f} s",
        ]
    )
