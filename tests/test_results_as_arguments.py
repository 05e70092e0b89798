"""A value returned by ``compute`` is an argument like any other, in every mode (issue 12).

In multiprocessing mode a large array comes back as a copy-on-write memory map of a dump file, and
the dump file is removed as soon as the caller holds the map (the dump directory when the
orchestrator closes). What must hold: the map, a view of it and a value computed from it can be
passed to tasks of the next graph, also on another orchestrator once the first is closed; they
get the keys of arrays with the same bytes (the file is gone, its name would say nothing), and the
tasks get those bytes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import orchestrix as ox
from tasks import checksum, ident

SHAPE = (400, 250)  # 800 kB, over the dump threshold: a memory map in multiprocessing mode
FILL = 1.5
full = ox.task(np.full)  # a worker imports numpy.full by name


@pytest.mark.timeout(300)
def test_result_and_its_views_are_arguments_of_the_next_graph(options):
    expected = np.full(SHAPE, FILL)
    with ox.Orchestrator(**options) as first:
        array = first.compute(full(SHAPE, FILL))
        assert np.array_equal(array, expected)
        view, derived = array[::3], array[1:] * 2
        sums = first.compute([checksum(array), checksum(view), checksum(derived)])
        assert sums == [expected.sum(), expected[::3].sum(), expected[1:].sum() * 2]
        keys = [checksum(array).key, checksum(view).key]
    if isinstance(array, np.memmap) and array.filename:
        assert not os.path.exists(array.filename)  # its dump directory went with the orchestrator
    # the same bytes, the same keys: before and after the close, and as for a plain array
    assert [checksum(array).key, checksum(view).key] == keys
    assert keys == [checksum(expected).key, checksum(expected[::3]).key]
    assert ox.tokenize(view) != ox.tokenize(array[: len(view)] + 1)
    with ox.Orchestrator(**options) as second:
        again = second.compute([ident(array), checksum(view), ident(derived[:10])])
        assert np.array_equal(again[0], expected)
        assert again[1] == expected[::3].sum()
        assert np.array_equal(again[2], expected[1:11] * 2)
        tiled = second.map_tiles(np.negative, array, (100, 100))
        assert np.array_equal(tiled, -expected)
