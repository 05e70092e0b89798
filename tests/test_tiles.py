"""Tiles: the geometry of ox.tiles, and orch.map_tiles on every backend against the computation
on the whole array (exactly equal), for every kind of source and of output."""

from __future__ import annotations

import numpy as np
import pytest

import orchestrix as ox
from tasks import mean3x3, scaled_sqrt


@pytest.mark.parametrize(
    ("shape", "tile_shape", "margin"),
    [((10, 7), 3, 0), ((10, 7), (4, 2), 1), ((5, 6, 4), 2, (1, 0, 2)), ((1, 1), 5, 3)],
)
def test_tiles_cover_the_array_once_with_clipped_margins(shape, tile_shape, margin):
    found = ox.tiles(shape, tile_shape, margin)
    cover = np.zeros(shape, dtype=int)
    positions = np.arange(np.prod(shape)).reshape(shape)
    margins = (margin,) * len(shape) if isinstance(margin, int) else margin
    for tile in found:
        cover[tile.window] += 1
        # the tile's own part, seen through its grown window, is its window
        assert np.array_equal(positions[tile.grown][tile.inner], positions[tile.window])
        for axis, (own, grown) in enumerate(zip(tile.window, tile.grown, strict=True)):
            assert grown.start == max(own.start - margins[axis], 0)
            assert grown.stop == min(own.stop + margins[axis], shape[axis])
    assert (cover == 1).all()
    assert [tile.index for tile in found] == sorted(tile.index for tile in found)


def test_tiles_refuse_bad_shapes():
    with pytest.raises(ValueError, match="2 axes"):
        ox.tiles((10,), 2)
    with pytest.raises(ValueError, match="margin"):
        ox.tiles((10, 10), 2, margin=-1)
    with pytest.raises(ValueError, match="tile_shape"):
        ox.tiles((10, 10), (2, 2, 2))


def _raster(tmp_path, kind):
    array = np.random.default_rng(7).random((97, 61))
    if kind == "array":
        return array, array
    path = tmp_path / "raster.npy"
    np.save(path, array)
    if kind == "path":
        return array, str(path)
    return array, np.load(path, mmap_mode="r")  # a memory map


@pytest.mark.parametrize("kind", ["array", "path", "memmap"])
@pytest.mark.parametrize("output", ["array", "sink", "none"])
def test_mean_filter_by_tiles_equals_the_whole_array(orch, tmp_path, kind, output):
    whole, source = _raster(tmp_path, kind)
    expected = mean3x3(whole)
    if output == "array":
        out = np.full(whole.shape, np.nan)
    elif output == "sink":
        out = ox.ArraySink(tmp_path / "out" / "mean.npy", whole.shape, np.float64)
    else:
        out = None
    result = orch.map_tiles(mean3x3, source, (20, 16), margin=1, out=out)
    assert np.array_equal(np.asarray(result), expected)  # exactly: same operations per pixel
    if output == "array":
        assert result is out
    if output == "sink":
        assert np.array_equal(np.load(tmp_path / "out" / "mean.npy"), expected)


def test_without_enough_margin_the_seams_differ(oracle):
    whole = np.random.default_rng(3).random((40, 40))
    result = oracle.map_tiles(mean3x3, whole, 10, margin=0)
    assert not np.array_equal(result, mean3x3(whole))  # the test above can fail


def test_pointwise_function_and_tile_sized_output(orch):
    whole = np.random.default_rng(5).random((33, 18, 2))  # trailing axis: bands
    result = orch.map_tiles(scaled_sqrt, whole, (8, 8, 2))
    assert np.array_equal(result, scaled_sqrt(whole))


def test_an_output_of_another_shape_is_an_error(oracle):
    with pytest.raises(ox.TaskError) as caught:
        oracle.map_tiles(lambda window: window[:2], np.zeros((10, 10)), 5, margin=1)
    assert "expected the grown window" in str(caught.value.__cause__)


def test_tasks_read_only_their_window_from_a_path(tmp_path, oracle):
    whole, path = _raster(tmp_path, "path")
    seen = []

    def record_shape(window):
        seen.append(window.shape)
        return window

    oracle.map_tiles(record_shape, path, 30, margin=2)
    expected = [t.grown_shape for t in ox.tiles(whole.shape, 30, 2)]
    assert seen == expected
    assert all(a * b < whole.size for a, b in seen)


def test_tile_keys_are_stable_and_follow_the_file(tmp_path):
    _, path = _raster(tmp_path, "path")
    out_dir = str(tmp_path / "run")

    def run():
        with ox.Orchestrator(mode="sequential", out_dir=out_dir, resume=True) as orch:
            result = orch.map_tiles(mean3x3, path, 50, margin=1)
            return result, orch.summary().tasks_loaded

    assert run()[1] == 0
    assert run()[1] == 4  # 2 x 2 tiles, loaded
    changed = np.random.default_rng(11).random((97, 61))
    np.save(path, changed)  # a new file: new keys, nothing stale is loaded
    result, loaded = run()
    assert loaded == 0 and np.array_equal(result, mean3x3(changed))


def test_a_resumed_run_keeps_the_tiles_already_in_its_sink(tmp_path):
    whole, path = _raster(tmp_path, "path")
    sink = ox.ArraySink(tmp_path / "smoothed.npy", whole.shape, np.float64)
    for loaded in (0, 4):
        options = {"mode": "sequential", "out_dir": str(tmp_path / "run"), "resume": True}
        with ox.Orchestrator(**options) as orch:
            result = orch.map_tiles(mean3x3, path, 50, margin=1, out=sink)
            assert orch.summary().tasks_loaded == loaded
        assert np.array_equal(result, mean3x3(whole))
