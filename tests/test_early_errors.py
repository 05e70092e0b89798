"""Errors that name the input, raised while the graph is built, not on a worker later (issue 14):
calls that do not fit the function's signature, an out/ArraySink that does not fit the source, a
task that holds the Orchestrator; and large arguments, warned of once and hashed once when they
cannot change."""

from __future__ import annotations

import functools
import pickle
import threading
import uuid
import warnings

import numpy as np
import pytest

import orchestrix as ox
from deadline import within
from orchestrix.graph import arraytokens
from orchestrix.graph.signature import SignatureCheck
from tasks import add, ident, inc, mean3x3, total

LARGE = arraytokens.LARGE_ARGUMENT_BYTES


def _parallel(orch: ox.Orchestrator) -> bool:
    return orch.config.mode != "sequential"


# -- 1. calls bound against the signature when they are made ------------------------------------


@ox.task
def load(i):
    return i


def _keyword_only(a, *, b):
    return a + b


def _positional_only(a, /, b=2):
    return a + b


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "reason"),
    [
        (load, (1, 2), {}, "too many positional arguments"),
        (load, (), {}, "missing a required argument: 'i'"),
        (load, (1,), {"j": 2}, "unexpected keyword argument 'j'"),
        (load, (1,), {"i": 2}, "multiple values for argument 'i'"),
        (ox.task(_keyword_only), (1,), {}, "missing a required argument: 'b'"),
        (ox.task(_positional_only), (), {"a": 1}, "'a' parameter is positional only"),
        (ox.task(functools.partial(add.func, 1)), (2, 3), {}, "too many positional arguments"),
    ],
)
def test_a_call_that_does_not_fit_the_signature_is_refused_when_made(task, args, kwargs, reason):
    with pytest.raises(TypeError, match=reason) as info:
        task(*args, **kwargs)
    assert f"task {task.name!r}" in str(info.value)
    assert f"{task.name}(" in str(info.value)  # the signature it should have fitted


class _Scaler:
    def __init__(self, factor):
        self.factor = factor

    def times(self, x, offset=0):
        return x * self.factor + offset


def test_calls_that_fit_are_accepted_whatever_the_kind_of_parameters():
    load(1)
    load(i=1)  # another key than load(1): arguments are not normalised, only checked
    assert ox.task(_keyword_only)(1, b=2).name == "_keyword_only"
    ox.task(_positional_only)(1)
    ox.task(_positional_only)(1, b=3)
    total(1, 2, 3, start=4)  # *values and a keyword with a default
    ox.task(functools.partial(add.func, 1))(2)
    ox.task(_Scaler(2).times)(3, offset=1)  # a bound method: self is not an argument
    ox.task(_Scaler)(2)  # a class: its __init__ without self
    ox.task(max)(1, 2, 3)  # a builtin inspect cannot read: not checked
    ox.task(np.add)(1, 2)


def test_defaults_rebound_after_the_task_was_made_are_followed():
    def scale(x, factor):
        return x * factor

    task = ox.task(scale)
    with pytest.raises(TypeError, match="missing a required argument: 'factor'"):
        task(1)
    scale.__defaults__ = (2,)
    assert task(1).name.endswith("scale")
    scale.__defaults__ = None
    with pytest.raises(TypeError, match="factor"):
        task(1)


def test_a_wrapper_is_checked_by_its_own_signature_not_the_wrapped_one():
    def injecting(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):  # gives the wrapped function an argument of its own
            return func(*args, 10, **kwargs)

        return wrapper

    @ox.task
    @injecting
    def plus(x, ten):
        return x + ten

    with ox.Orchestrator(mode="sequential") as orch:
        assert orch.compute(plus(1)) == 11  # plus(x, ten) alone would have refused the call


def _unpicklable_default(x, lock=threading.Lock()):  # noqa: B008 - the point of the test
    return x


def test_a_check_travels_with_its_task_whatever_its_defaults():
    task = ox.task(_unpicklable_default)
    check = pickle.loads(pickle.dumps(task.signature_check))  # read again where it lands
    check.check((1,), {})
    with pytest.raises(TypeError, match="too many"):
        check.check((1, 2, 3), {})
    assert isinstance(check, SignatureCheck)


def test_submit_and_map_refuse_arguments_that_do_not_fit_before_any_work(orch, oracle):
    with pytest.raises(TypeError, match=r"task 'load'.*too many positional"):
        orch.submit(load, 1, 2)
    with pytest.raises(TypeError, match=r"task 'add'.*missing a required argument: 'b'"):
        orch.submit(add.func, 1)
    with pytest.raises(TypeError, match=r"task 'inc'.*unexpected keyword argument 'y'"):
        orch.submit(inc, 1, y=2)
    with pytest.raises(TypeError, match=r"task 'add'.*missing"):
        orch.map(add, [1, 2, 3])  # one iterable: one argument per call
    with pytest.raises(TypeError, match=r"task 'inc'.*too many"):
        orch.map(inc, [1], [2], chunksize=1)
    assert orch.summary().tasks_done == orch.summary().tasks_failed == 0  # nothing was sent
    assert (
        within(60, lambda: orch.submit(add, 1, b=2).result()) == oracle.submit(add, 1, 2).result()
    )
    assert within(60, lambda: list(orch.map(add, [1, 2], [10, 20]))) == [11, 22]


def test_map_tiles_refuses_a_function_that_cannot_take_a_window():
    refused = pytest.raises(TypeError, match=r"map_tiles calls func with one argument.*'b'")
    with ox.Orchestrator(mode="sequential") as orch, refused:
        orch.map_tiles(add.func, np.zeros((4, 4)), 2)


# -- 2. an out array or ArraySink that does not fit the source ----------------------------------


def test_a_sink_that_does_not_fit_the_source_is_refused_before_any_task_runs(orch, tmp_path):
    source = np.arange(12 * 16, dtype=np.float64).reshape(12, 16)
    cases = [
        (ox.ArraySink(tmp_path / "small.npy", (10, 16), np.float64), r"\(10, 16\)"),
        (ox.ArraySink(tmp_path / "axes.npy", (12,), np.float64), r"\(12,\)"),
        (ox.ArraySink(tmp_path / "swapped.npy", (16, 12, 3), np.float64), r"\(16, 12, 3\)"),
        (np.zeros((12, 15)), r"out array's shape \(12, 15\)"),
    ]
    for out, shape in cases:
        with pytest.raises(ValueError, match=shape + r".*expected \(12, 16\)"):
            orch.map_tiles(mean3x3, source, (6, 8), margin=1, out=out)
    with pytest.raises(TypeError, match="dtype object"):
        sink = ox.ArraySink(tmp_path / "objects.npy", (12, 16), object)
        orch.map_tiles(mean3x3, source, (6, 8), margin=1, out=sink)
    assert list(tmp_path.iterdir()) == []  # no sink file was made
    assert orch.summary().tasks_done == orch.summary().tasks_failed == 0


def _bands(window):
    return np.stack([window, -window], axis=-1)


def test_a_sink_with_trailing_axes_of_its_own_is_filled(orch, tmp_path):
    source = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    sink = ox.ArraySink(tmp_path / "bands.npy", (8, 6, 2), np.float32)
    result = within(60, orch.map_tiles, _bands, source, (4, 3), out=sink)
    assert np.array_equal(result, _bands(source))


# -- 3. a task that holds the Orchestrator -----------------------------------------------------


def test_a_task_holding_the_orchestrator_is_refused_when_called(orch):
    in_closure = ox.task(lambda x: orch.config and x, name="reads_orch")
    cases = [
        (lambda: ident(orch), "ident"),
        (lambda: add(1, b={"deep": [orch]}), "add"),  # at any depth: it is tokenized
        (lambda: in_closure(1), "reads_orch"),
    ]
    for call, name in cases:
        with pytest.raises(ox.OrchestratorInTaskError, match="cannot use the Orchestrator") as info:
            call()
        assert isinstance(info.value, TypeError)
        assert str(info.value).startswith(f"task {name!r}: ")


def test_a_submitted_call_holding_the_orchestrator_is_refused_at_submit(orch):
    def uses_orch():
        return orch.config.mode

    cases = [
        lambda: orch.submit(ident, orch),
        lambda: orch.submit(ident, x=orch),
        lambda: orch.submit(uses_orch),  # in its closure
        lambda: orch.submit(functools.partial(add.func, orch), 1),
        lambda: orch.submit(orch.compute, inc(1)),  # a method of the orchestrator
    ]
    for call in cases:
        with pytest.raises(ox.OrchestratorInTaskError, match="cannot use the Orchestrator"):
            call()
    assert orch.summary().tasks_done == orch.summary().tasks_failed == 0


class _Holder:
    orch = "not the orchestrator"


def _reads_attribute(holder):
    return holder.orch  # an attribute named like the module's global below, not the global


def test_a_global_orchestrator_refuses_the_functions_that_read_it_only(orch, oracle):
    module = globals()
    module["orch"] = oracle  # a script's ``orch = ox.Orchestrator(...)`` at module level
    try:
        assert within(60, lambda: orch.submit(_reads_attribute, _Holder).result()) == _Holder.orch
        reads_global = eval("lambda: orch.config", module)  # a lambda of a script
        with pytest.raises(ox.OrchestratorInTaskError, match="cannot use the Orchestrator"):
            orch.submit(reads_global)
    finally:
        del module["orch"]


def test_the_orchestrator_cannot_be_pickled_or_tokenized():
    with ox.Orchestrator(mode="sequential") as orch:
        with pytest.raises(ox.OrchestratorInTaskError, match="cannot use the Orchestrator"):
            pickle.dumps(orch)
        with pytest.raises(ox.OrchestratorInTaskError, match="cannot use the Orchestrator"):
            ox.tokenize([1, {"o": orch}])


def test_the_worker_modes_say_why_an_orchestrator_deep_in_a_call_cannot_be_sent(orch):
    if not _parallel(orch):
        pytest.skip("the sequential mode sends nothing; it runs the call (see submit's check)")
    future = orch.submit(ident, {"deep": [orch]})  # below the check at submit: pickle refuses
    with pytest.raises(ox.TaskError, match="cannot use the Orchestrator") as info:
        within(60, future.result)
    assert info.value.name == "ident"


# -- 4. large arguments: warned of once per task name, hashed once while they cannot change -----


def _large(fill: float = 0.0) -> np.ndarray:
    return np.full(LARGE // 8 + 1, fill)  # just over the threshold


def _large_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ox.LargeArgumentWarning)]


def test_a_large_argument_is_warned_of_once_per_task_name():
    big = _large()
    first = ox.task(ident.func, name=f"first-{uuid.uuid4().hex}")
    second = ox.task(ident.func, name=f"second-{uuid.uuid4().hex}")
    impure = ox.task(ident.func, name=f"impure-{uuid.uuid4().hex}", pure=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            first(big)
            second([big])  # inside a list too
        impure({"a": big})
        first(np.zeros(10))
    large = [w for w in caught if issubclass(w.category, ox.LargeArgumentWarning)]
    found = [str(w.message) for w in large]
    assert len(found) == 3, found
    assert [first.name in found[0], second.name in found[1], impure.name in found[2]] == [True] * 3
    assert "100 MB" in found[0]
    assert all(hint in found[0] for hint in (".npy", "mmap_mode='r'", "map_tiles"))
    assert large[0].filename == __file__  # points at the line that called the task


def test_a_large_argument_of_a_submitted_call_is_warned_of_once(orch):
    big = _large()
    name = f"submitted-{uuid.uuid4().hex}"  # a name of its own: warned once per name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        futures = [orch.submit(ox.task(len, name=name), big) for _ in range(2)]
        assert within(60, lambda: [f.result() for f in futures]) == [big.size] * 2
    large = [w for w in caught if issubclass(w.category, ox.LargeArgumentWarning)]
    assert len(large) == 1 and name in str(large[0].message)
    assert large[0].filename == __file__


def test_small_arguments_and_memory_maps_named_by_file_are_not_warned_of(tmp_path):
    path = tmp_path / "big.npy"
    np.lib.format.open_memmap(path, "w+", np.float64, (LARGE // 8 + 1,)).flush()
    mapped = np.load(path, mmap_mode="r")
    task = ox.task(ident.func, name=f"quiet-{uuid.uuid4().hex}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task(np.zeros(1000))
        task(mapped)  # named by its file, not hashed
    assert _large_warnings(caught) == []


@pytest.fixture
def hashings(monkeypatch) -> list[int]:
    """The sizes of the large arrays hashed from now on."""
    seen: list[int] = []
    real = arraytokens._feed_array_bytes

    def counting(update, array, numpy):
        if array.nbytes >= LARGE:
            seen.append(array.nbytes)
        return real(update, array, numpy)

    monkeypatch.setattr(arraytokens, "_feed_array_bytes", counting)
    return seen


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ox.LargeArgumentWarning)
        yield


def test_a_read_only_large_array_is_hashed_once_for_every_call(hashings, quiet):
    big = _large(1.0)
    big.flags.writeable = False
    keys = {ident(big).key for _ in range(4)}
    assert len(hashings) == 1
    writeable = _large(1.0)  # the same bytes: the same key, hashed at every call
    assert {ident(writeable).key for _ in range(2)} == keys
    assert len(hashings) == 3


def test_a_writeable_large_array_mutated_between_calls_gets_a_new_key(hashings, quiet):
    buffer = _large()
    before = ident(buffer).key
    buffer[-1] = 1.0  # a demanding user refills the buffer between calls
    after = ident(buffer).key
    assert before != after
    view = buffer.view()
    view.flags.writeable = False  # read-only, but its base is written through
    first = ident(view).key
    buffer[-1] = 2.0
    assert ident(view).key not in (first, before, after)
    assert len(hashings) == 4


def test_a_kept_digest_is_that_of_the_array_and_is_dropped_with_it(quiet):
    big = _large()
    big.flags.writeable = False
    key = ident(big).key
    other = big.reshape(1, -1)  # a read-only view, same bytes, another shape: another key
    assert ident(other).key != key
    assert id(big) in arraytokens._ARRAY_DIGESTS
    ident_of_big = id(big)
    del big, other
    assert ident_of_big not in arraytokens._ARRAY_DIGESTS
