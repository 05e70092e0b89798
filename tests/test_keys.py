"""Task keys: deterministic across runs, different when an argument or the code differs."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import orchestrix as ox
from orchestrix.tokenize import tokenize
from tasks import add, inc

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
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
