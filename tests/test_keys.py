"""Task keys: deterministic across runs, different when an argument or the code differs."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import orchestrix as ox
from orchestrix.graph.tokenize import tokenize
from tasks import add, describe, inc

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import pytest
from tasks import add, inc, divmod_task
import orchestrix as ox
q, r = divmod_task(inc(np.arange(10)), 3)
node = add(q, {{"b": {{1, 2, 3}}, "a": [1.5, None, "x"]}})
print(node.key, r.key, ox.task(lambda x: x * 2)(3).key)
"""


def _keys_in_fresh_interpreter(seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    script = SCRIPT.format(tests=str(Path(__file__).parent))
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout


def test_keys_are_identical_across_runs_and_hash_seeds():
    assert _keys_in_fresh_interpreter("1") == _keys_in_fresh_interpreter("2")


def test_key_is_name_plus_token():
    node = inc(1)
    name, token = node.key.rsplit("-", 1)
    assert name == "inc" and len(token) == 32


def test_different_arguments_give_different_keys():
    assert inc(1).key == inc(1).key
    assert inc(1).key != inc(2).key
    assert inc(1).key != inc(1.0).key
    assert inc(True).key != inc(1).key
    assert add(1, 2).key != add(2, 1).key
    assert add(1, b=2).key != add(1, 2).key


def test_upstream_change_changes_downstream_key():
    assert inc(inc(1)).key != inc(inc(2)).key


def test_set_order_does_not_matter_dict_order_does():
    # A dict's order is what a task iterating it sees (a DataFrame's columns): part of the key.
    assert tokenize({"a": 1, "b": 2}) != tokenize({"b": 2, "a": 1})
    assert tokenize({"a": 1, "b": 2}) == tokenize(dict([("a", 1), ("b", 2)]))
    assert tokenize({3, 1, 2}) == tokenize({1, 2, 3})
    assert tokenize({"a": 1}) != tokenize({"a": 2})


def test_numpy_arrays_by_content_dtype_and_shape():
    a = np.arange(12, dtype=np.int64)
    assert tokenize(a) == tokenize(a.copy())
    assert tokenize(a) != tokenize(a.astype(np.int32))
    assert tokenize(a) != tokenize(a.reshape(3, 4))
    b = a.copy()
    b[5] = -1
    assert tokenize(a) != tokenize(b)
    assert tokenize(a.reshape(3, 4).T) == tokenize(np.ascontiguousarray(a.reshape(3, 4).T))


def test_memmap_is_named_by_file_not_read(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.arange(100.0))
    first = np.load(path, mmap_mode="r")
    assert tokenize(first) == tokenize(np.load(path, mmap_mode="r"))
    np.save(tmp_path / "other.npy", np.arange(100.0))
    assert tokenize(first) != tokenize(np.load(tmp_path / "other.npy", mmap_mode="r"))


def test_functions_by_name_code_and_closure():
    def make(scale):
        return lambda x: x * scale

    assert tokenize(make(2)) == tokenize(make(2))
    assert tokenize(make(2)) != tokenize(make(3))
    assert tokenize(lambda x: x + 1) != tokenize(lambda x: x - 1)
    assert tokenize(functools.partial(pow, 2)) != tokenize(functools.partial(pow, 3))
    assert tokenize(np.add) != tokenize(np.subtract)


def test_recursive_structures_terminate():
    loop: list = [1]
    loop.append(loop)
    assert tokenize(loop) == tokenize(loop)


def test_unpicklable_values_get_unique_keys():
    import threading

    lock = threading.Lock()
    assert ox.task(id)(lock).key != ox.task(id)(lock).key


def test_name_override_shows_in_key():
    assert ox.task(abs, name="absolute")(-1).key.startswith("absolute-")


# -- any depth, any hash seed, any function change, any cycle (issue 12) ----------------------


def _nested(leaf, depth, kind):
    value = leaf
    for _ in range(depth):
        value = {"x": value} if kind == "dict" else [value] if kind == "list" else (value,)
    return value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["list", "tuple", "dict"])
def test_distinct_arguments_at_any_depth_get_distinct_keys(kind):
    deep = 20_000  # far beyond the recursion limit: the walk must not recurse
    assert tokenize(_nested(1, deep, kind)) != tokenize(_nested(2, deep, kind))
    assert tokenize(_nested(1, deep, kind)) == tokenize(_nested(1, deep, kind))
    in_sets = [tokenize(_nested(frozenset({leaf}), 100, kind)) for leaf in (1, 2)]
    assert in_sets[0] != in_sets[1]


@pytest.mark.timeout(60)
def test_compute_returns_each_deep_arguments_own_result():
    first, second = _nested(1, 100, "list"), _nested(2, 100, "list")
    assert describe(first).key != describe(second).key
    with ox.Orchestrator(mode="sequential") as orch:
        assert orch.compute([describe(first), describe(second)]) == [first, second]


SEEDED = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import pytest
import orchestrix as ox
from tasks import add, ident


class Holder:
    def __init__(self):
        self.names = {{"alpha", "beta", "gamma", "delta"}}
        self.mixed = {{1: "one", "two": 2, (3, "x"): frozenset({{"p", "q", 4.5}}), None: b"z"}}


args = [
    {{"alpha", "beta", "gamma", "delta", "epsilon"}},
    frozenset({{"x", "y", ("z", 1), frozenset({{"u", "v"}})}}),
    {{1: "a", "b": 2, 3.5: [{{"c", "d"}}], ("e", 4): None, frozenset({{"f"}}): "g"}},
    Holder(),
    [Holder(), {{"nested": [{{"s1", "s2", "s3"}}]}}],
]
print([ox.tokenize(arg) for arg in args], [ident(arg).key for arg in args], add(*args[:2]).key)
"""


def test_keys_of_sets_dicts_and_objects_are_the_same_under_every_hash_seed():
    script = SEEDED.format(tests=str(Path(__file__).parent))
    outputs = set()
    for seed in ("0", "1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outputs.add(
            subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                timeout=120,
            ).stdout
        )
    assert len(outputs) == 1, outputs


def _defined(source):
    namespace: dict = {}
    exec(source, namespace)  # each variant compiled afresh, as an edited script
    return namespace["f"]


FUNCTION_VARIANTS = [
    "def f(a, b): return a - b",
    "def f(b, a): return b - a",  # same bytecode, other parameter names
    "def f(a, b=1): return a - b",
    "def f(a, b=2): return a - b",
    "def f(a=1, b=1): return a - b",
    "def f(a, *, b=1): return a - b",
    "def f(a, *, b=2): return a - b",
    "def f(a, /, b): return a - b",
    "def f(a, *b): return a - b",
    "def f(a, **b): return a - b",
    "def f(a, b): return a + b",
    "def f(a, b):\n    try:\n        return a - b\n    except ValueError:\n        return 0",
]


def test_function_key_changes_with_body_parameters_and_defaults():
    tokens = [tokenize(_defined(source)) for source in FUNCTION_VARIANTS]
    assert len(set(tokens)) == len(FUNCTION_VARIANTS)
    assert [tokenize(_defined(source)) for source in FUNCTION_VARIANTS] == tokens
    # each called with arguments that fit it (a call that does not is refused at once)
    keys = {
        ox.task(_defined(source))(*((1,) if "*" in source else (1, 2))).key
        for source in FUNCTION_VARIANTS
    }
    assert len(keys) == len(FUNCTION_VARIANTS)


def test_task_key_follows_closure_and_defaults_rebound_after_decoration():
    scale = 2

    @ox.task
    def times(x):
        return x * scale

    before = times(1).key
    scale = 3
    assert times(1).key != before
    scale = 2
    assert times(1).key == before
    times.func.__defaults__ = (5,)
    assert times(1).key != before
    # the closure's value, not only its identity, is what the key holds
    assert ox.task(lambda x: x * scale)(1).key != ox.task(lambda x: x * (scale + 1))(1).key


class _Node:
    def __init__(self, value):
        self.value = value
        self.children: list = []
        self.parent = None


def _ring(values):
    nodes = [_Node(v) for v in values]
    for node, after in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        node.children.append(after)
        after.parent = node
    return nodes[0]


@pytest.mark.timeout(60)
def test_arguments_that_contain_themselves_are_encoded_exactly():
    loop_a: list = [1]
    loop_a.append(loop_a)
    loop_b: list = [2]
    loop_b.append(loop_b)
    assert tokenize(loop_a) == tokenize(loop_a) != tokenize(loop_b)
    # a loop of two lists is not a loop of one with the same items
    outer: list = [1]
    inner: list = [1, outer]
    outer.append(inner)
    assert tokenize(outer) != tokenize(loop_a)
    cycle: dict = {"k": 1}
    cycle["self"] = cycle
    other: dict = {"k": 2}
    other["self"] = other
    assert tokenize(cycle) == tokenize(cycle) != tokenize(other)
    assert tokenize(_ring([1, 2, 3])) == tokenize(_ring([1, 2, 3])) != tokenize(_ring([1, 2, 4]))
    assert tokenize({frozenset({1}), _ring([5, 6])}) != tokenize({frozenset({1}), _ring([5, 7])})
    assert inc(loop_a).key != inc(loop_b).key


@pytest.mark.timeout(60)
def test_a_value_shared_many_times_is_walked_once():
    shared: tuple = ()
    for _ in range(200):  # 2**200 paths, 200 objects
        shared = (shared, shared)
    assert tokenize(shared) == tokenize(shared)


def test_arrays_of_every_kind_by_what_they_hold():
    dates = np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]")
    assert tokenize(dates) != tokenize(dates + 1)
    mask_a = np.ma.array([1, 2], mask=[0, 1])
    assert tokenize(mask_a) != tokenize(np.ma.array([1, 2], mask=[1, 0]))
    named = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])
    assert tokenize(named) != tokenize(np.zeros(2, dtype=[("c", "<i4"), ("d", "<f8")]))
    assert tokenize(np.float64(1.0)) != tokenize(np.float32(1.0)) != tokenize(1.0)


def test_memory_map_views_are_named_by_the_bytes_they_show(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.arange(100.0))
    mapped = np.load(path, mmap_mode="r")
    assert tokenize(mapped[::2]) != tokenize(mapped[:50])  # same shape, other bytes
    assert tokenize(mapped[10:20]) == tokenize(np.load(path, mmap_mode="r")[10:20])
    assert tokenize(mapped[10:20]) != tokenize(mapped[11:21])


def test_memory_map_of_a_deleted_or_replaced_file_is_named_by_its_bytes(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.arange(100.0))
    old = np.load(path, mmap_mode="r")
    np.save(tmp_path / "new.npy", np.arange(100.0) * 2)
    os.replace(tmp_path / "new.npy", path)  # an atomic rewrite: the old map shows the old bytes
    new = np.load(path, mmap_mode="r")
    assert tokenize(old) != tokenize(new)
    assert tokenize(old) == tokenize(np.arange(100.0))
    os.unlink(path)
    assert tokenize(new) == tokenize(np.arange(100.0) * 2)  # no error: the file is gone


def test_writable_memory_map_is_named_by_its_bytes(tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, np.zeros(10))
    writable = np.load(path, mmap_mode="r+")
    reader = np.load(path, mmap_mode="r")
    tokens = set()
    for value in range(5):
        writable[3] = value  # a write to a page already dirty does not change the file's mtime
        tokens.add(tokenize(reader))
    assert len(tokens) == 5
    assert tokenize(writable) == tokenize(reader)


def test_library_values_are_encoded_by_what_pickle_stores():
    import collections
    import datetime
    import decimal
    import re

    pairs = [
        (datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 2)),
        (decimal.Decimal("1.1"), decimal.Decimal("1.10")),
        (re.compile("a+"), re.compile("a*")),  # reduced through copyreg's table
        (collections.defaultdict(list, a=[1]), collections.defaultdict(set, a=[1])),
        (collections.OrderedDict(a=1), {"a": 1}),
    ]
    for value, other in pairs:
        assert tokenize(value) == tokenize(copy.deepcopy(value)) != tokenize(other), value


# Keys of map_tiles tasks computed by orchestrix 0.1.0 before its modules moved into subpackages
# (commit 8d95702). The tile task, Tile, Source and ArraySink carry fixed names in keys, so that
# a module move changes no key and a resume across the upgrade finds its results. Keys hash the
# tile task's bytecode, which differs between Python versions: pinned on 3.11 only.
GOLDEN_TILE_KEYS = {
    "array": ["8ac6344e879fbff0861e934bb0c1ad2d", "2e59a92c81366d50c2a8a9ffadac2f9e"],
    "array-sink": ["c1b4c1843ca161bbb10883e33d307cc3", "b9604ec54efbbcf1530dc61b8eb7a5c4"],
    "raw-sink": ["4bb397d4b8e5bc0f95b37ecf0140474a", "7c7b68c286c23b12fafa6b3028ff193b"],
    "npy": ["dbd9c57e33bf4156e085c49f95fc0912", "63b807ca061a05781b50081572b0f4a5"],
}


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="golden keys made on Python 3.11")
def test_map_tiles_keys_do_not_change_when_modules_move(monkeypatch):
    import operator

    from orchestrix.graph.tiles import ArraySink, Source, plan_tiles

    monkeypatch.setattr(ArraySink, "create", lambda self: None)  # no file: keys only
    data = np.arange(48, dtype="float32").reshape(6, 8)
    sink = ArraySink("/nonexistent/orchestrix-golden/out.npy", data.shape, "float32")
    raw = Source("/nonexistent/in.raw", "1:2", 16, "<f4", (6, 8), "F")
    npy = Source("/nonexistent/in.npy", "3:4")
    monkeypatch.setitem(plan_tiles.__globals__, "source_of", lambda source: (source, (6, 8)))
    cases = {"array": (data, None), "array-sink": (data, sink), "raw-sink": (raw, sink)}
    cases["npy"] = (npy, None)
    for case, (source, out) in cases.items():
        plan = plan_tiles(operator.neg, source, (3, 4), 1, out)
        keys = [target.key for target in plan.targets[:2]]
        assert keys == [f"neg[tile]-{token}" for token in GOLDEN_TILE_KEYS[case]], case
