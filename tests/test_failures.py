"""failures.py, the one module that turns failures into the caller's errors: pure, no processes."""

from __future__ import annotations

import pathlib
import pickle
import re
import signal

import pytest

import orchestrix as ox
from orchestrix import failures
from orchestrix.errors import untyped_class
from orchestrix.failures import TaskFailure
from orchestrix.worker.execute import UnitFailed

SRC = pathlib.Path(ox.__file__).parent


def test_a_raised_exception_becomes_a_task_error_with_its_remote_traceback():
    exc = ValueError("bad input")
    failure = TaskFailure("k-1", "load", exc, "Traceback ...\nValueError: bad input")
    error = failures.caller_error(failure)
    assert untyped_class(error) is ox.TaskError and isinstance(error, ValueError)
    assert type(error).__name__ == "TaskError(ValueError)" and error.raised is ValueError
    assert (error.key, error.name) == ("k-1", "load")
    assert str(error) == "task 'load' failed: ValueError: bad input (key k-1)"
    assert error.__cause__ is exc
    assert isinstance(exc.__cause__, ox.RemoteTraceback)
    assert str(exc.__cause__) == "Traceback ...\nValueError: bad input"


def test_an_exception_raised_here_keeps_its_own_cause():
    cause = KeyError("inner")
    exc = RuntimeError("outer")
    exc.__cause__ = cause
    error = failures.caller_error(TaskFailure("k", "n", exc, "text"))
    assert error.__cause__ is exc and exc.__cause__ is cause  # no RemoteTraceback over it
    plain = failures.caller_error(TaskFailure("k", "n", ValueError("x")))
    assert plain.__cause__.__cause__ is None  # no text: it did not cross a process


def test_a_verdict_is_the_callers_error_as_it_is():
    verdict = failures.closed_error("k-2", "f")
    assert failures.caller_error(verdict) is verdict
    assert str(verdict) == "task 'f' did not finish: the orchestrator was closed (key k-2)"
    assert failures.recorded(verdict) == (verdict, None)
    assert failures.worker_of(verdict) is None


def test_a_task_raising_a_task_error_is_a_fact_not_a_verdict():
    inner = ox.TaskError("x", "inner", "nested run failed")
    error = failures.caller_error(TaskFailure("k", "outer", inner, None, worker="w-1"))
    assert error is not inner and error.__cause__ is inner
    assert str(error) == "task 'outer' failed: TaskError: nested run failed (key k)"
    assert failures.recorded(TaskFailure("k", "o", inner, "tb")) == (inner, "tb")
    assert failures.worker_of(TaskFailure("k", "o", inner, worker="w-1")) == "w-1"


def test_upstream_error_names_what_the_upstream_task_raised():
    failure = TaskFailure("a-1", "a", ZeroDivisionError("division by zero"))
    cause = failures.caller_error(failure)
    error = failures.upstream_error("b-2", "b", failure, cause)
    assert untyped_class(error) is ox.UpstreamTaskError and isinstance(error, ZeroDivisionError)
    assert str(error) == (
        "task 'b' did not run: upstream task 'a' failed with ZeroDivisionError: division by "
        "zero (key b-2, upstream key a-1)"
    )
    assert (error.upstream_key, error.upstream_name) == ("a-1", "a")
    assert error.__cause__ is cause


def test_upstream_of_a_verdict_names_the_verdict_or_the_exception_behind_it():
    crash = failures.crash_error("a-1", "a", 3, 99)
    error = failures.upstream_error("b-2", "b", crash, crash)
    assert "failed with WorkerCrashedError: the worker process running task 'a'" in str(error)
    killed = RuntimeError("KilledWorker: gone")
    verdict = failures.killed_worker_error("a-1", "a", 2, killed)
    error = failures.upstream_error("b-2", "b", verdict, verdict)
    assert "failed with RuntimeError: KilledWorker: gone (key b-2" in str(error)


def test_canary_error():
    cause = ox.TaskError("k", "n", "boom")
    error = failures.canary_error(cause, 3)
    assert type(error) is ox.CanaryError and (error.key, error.name) == ("k", "n")
    assert str(error) == (
        "the canary run (the first 3 targets) failed, so the other targets were not scheduled: boom"
    )


def test_crash_messages_name_the_exit_code_or_the_signal():
    error = failures.crash_error("k", "f", 3, 42)
    assert type(error) is ox.WorkerCrashedError and error.exitcode == 3
    assert str(error) == "the worker process running task 'f' exited with code 3 (pid 42, key k)"
    killed = str(failures.crash_error("k", "f", -signal.SIGKILL, 42))
    assert "was killed by SIGKILL (the kernel's out-of-memory killer" in killed
    assert "a segmentation fault" in str(failures.crash_error("k", "f", -signal.SIGSEGV, 42))
    assert "was killed by signal 200 (pid 42" in str(failures.crash_error("k", "f", -200, 42))
    assert "exited with code None" in str(failures.crash_error("k", "f", None, 42))


def test_startup_crash():
    message = failures.startup_crash_message(1, 7, "Traceback\nFileExistsError: x\n")
    assert message == (
        "worker processes exit as soon as they start: worker 7 exited with code 1; its "
        "error:\nTraceback\nFileExistsError: x"
    )
    assert failures.startup_crash_message(1, 7, None).endswith("worker 7 exited with code 1")
    error = failures.startup_crash_error("k", "f", message, 1)
    assert type(error) is ox.WorkerCrashedError and str(error) == message
    assert (error.key, error.name, error.exitcode) == ("k", "f", 1)


def test_limits_and_stalls():
    timeout = failures.timeout_error("k", "f", 2.5)
    assert type(timeout) is ox.TaskTimeoutError and timeout.limit == 2.5
    assert str(timeout) == (
        "task 'f' ran longer than per_job_timeout=2.5 s; its worker was killed (key k)"
    )
    dask = failures.timeout_error("k", "f", 2.5, restarted=True)
    assert "; its worker is restarted (key k)" in str(dask)
    memory = failures.memory_error("k", "f", 1234.4, 1000)
    assert type(memory) is ox.WorkerMemoryError
    assert (memory.peak_rss_mb, memory.limit_mb) == (1234.4, 1000)
    assert str(memory) == (
        "task 'f' made its worker use 1,234 MB, over max_ram_per_worker=1,000 MB; the worker "
        "was killed (key k)"
    )
    stall = failures.stall_error("k", "f", 9)
    assert type(stall) is ox.StallError
    assert str(stall) == (
        "no task finished for task_timeout=9 s, twice, while task 'f' was running (key k)"
    )
    assert "while task 'f' was waited for" in str(failures.stall_error("k", "f", 9, running=False))


def test_no_worker_broken_pool_and_dask_errors():
    none = failures.no_worker_error("k", "f", "no slurm worker joined")
    assert type(none) is ox.NoWorkerError
    assert str(none) == "task 'f' (key k) cannot run: no slurm worker joined"
    broken = failures.broken_pool_error("k", "f", "its manager died")
    assert type(broken) is ox.TaskError
    assert str(broken) == "task 'f' did not finish: its manager died (key k)"
    exc = RuntimeError("lost")
    killed = failures.killed_worker_error("k", "f", 2, exc)
    assert type(killed) is ox.WorkerCrashedError and killed.__cause__ is exc
    assert str(killed) == "the workers running task 'f' died 3 times (retries=2): lost (key k)"
    other = failures.scheduler_error("k", "f", exc)
    assert type(other) is ox.TaskError and other.__cause__ is exc
    assert str(other) == "task 'f' failed in dask: RuntimeError: lost"


def test_results_that_cannot_be_read():
    exc = EOFError("truncated")
    unpickled = failures.unpicklable_result_error("k", "f", exc)
    assert (
        str(unpickled)
        == "the result of task 'f' could not be unpickled: EOFError: truncated (key k)"
    )
    read = failures.unreadable_result_error("k", "f", exc)
    assert str(read) == "the result of task 'f' could not be read: EOFError: truncated (key k)"
    assert unpickled.__cause__ is exc and read.__cause__ is exc


def test_map_errors():
    batch = failures.timeout_error("b-1", "call_batch", 5)
    renamed = failures.map_batch_error(batch, "square", 10, 4)
    assert type(renamed) is ox.TaskTimeoutError and renamed.limit == 5
    assert (renamed.key, renamed.name) == ("b-1", "square")
    assert str(renamed) == f"{batch} (map items 10 to 13, in batch task 'call_batch')"
    same = ox.TaskError("b-1", "square", "x")
    assert failures.map_batch_error(same, "square", 0, 1) is same
    exc = ValueError("odd")
    item = failures.map_item_error(batch, "square", 12, 2, exc, "Traceback\nValueError: odd")
    assert untyped_class(item) is ox.TaskError and isinstance(item, ValueError)
    assert (item.key, item.name) == ("b-1[2]", "square")
    assert str(item) == (
        "task 'square' failed on map item 12: ValueError: odd (key b-1[2], call 2 of batch task "
        "'call_batch')"
    )
    assert item.__cause__ is exc and isinstance(exc.__cause__, ox.RemoteTraceback)


def test_portable_failures_and_unit_failed_pickle():
    class Local(Exception):  # a class defined in a function does not pickle
        pass

    failure = failures.portable_failure(TaskFailure("k", "f", Local("x"), "tb", worker="w"))
    assert type(failure.exception) is RuntimeError
    assert "Local: x (the exception itself could not cross to the caller" in str(failure.exception)
    copy = pickle.loads(pickle.dumps(UnitFailed(failure, "tcp://w:1")))
    assert copy.restart_worker == "tcp://w:1" and copy.failure.traceback_text == "tb"
    verdict = failures.timeout_error("k", "f", 1.0, restarted=True)
    assert failures.portable_failure(verdict) is verdict
    copy = pickle.loads(pickle.dumps(UnitFailed(verdict, "tcp://w:1")))
    assert type(copy.failure) is ox.TaskTimeoutError and str(copy.failure) == str(verdict)


@pytest.fixture
def tblib_pickling(monkeypatch):
    """What ``import distributed`` does to this process: tblib's pickling for every exception
    class that exists then (so a class defined later, as hostile.NeedsArgs may be, has none);
    undone after the test."""
    import copyreg
    from types import TracebackType

    from tblib.pickling_support import pickle_exception, pickle_traceback

    from hostile import NeedsArgs
    from orchestrix.engine.mapping import ItemFailed

    for kind in (ItemFailed, UnitFailed, RuntimeError, ValueError):
        monkeypatch.setitem(copyreg.dispatch_table, kind, pickle_exception)
    monkeypatch.setitem(copyreg.dispatch_table, TracebackType, pickle_traceback)
    monkeypatch.delitem(copyreg.dispatch_table, NeedsArgs, raising=False)


def test_an_unportable_link_of_a_chain_does_not_make_the_whole_exception_unportable(
    tblib_pickling,
):
    from hostile import UNREBUILDABLE_DETAIL, NeedsArgs
    from orchestrix.engine.mapping import ItemFailed, call_batch

    def item(value):
        raise NeedsArgs(value, UNREBUILDABLE_DETAIL)

    with pytest.raises(ItemFailed) as info:  # raised `from None`: NeedsArgs is its context
        call_batch(item, [(7,)])
    portable = failures.portable_exception(info.value)
    assert type(portable) is ItemFailed  # our record, not a RuntimeError about it
    copy = pickle.loads(pickle.dumps(portable))
    assert copy.index == 0 and UNREBUILDABLE_DETAIL in str(copy.exception)
    # a cause is kept, as a RuntimeError naming it, when only the cause is unportable
    outer = ValueError("outer")
    outer.__cause__ = NeedsArgs(1, UNREBUILDABLE_DETAIL)
    portable = failures.portable_exception(outer)
    assert portable is outer and UNREBUILDABLE_DETAIL in str(portable.__cause__)
    assert UNREBUILDABLE_DETAIL in str(pickle.loads(pickle.dumps(portable)).__cause__)


#: the orchestrix errors about a task: built only in failures.py (and defined in errors.py)
_TASK_ERRORS = (
    "TaskError|UpstreamTaskError|WorkerCrashedError|TaskTimeoutError|WorkerMemoryError"
    "|CanaryError|StallError|NoWorkerError"
)
_CONSTRUCTED = re.compile(rf"(?<![\w.])(?:{_TASK_ERRORS})\(")


def test_no_module_but_failures_builds_a_task_error():
    builders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("failures.py", "errors.py") and path.parent == SRC:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _CONSTRUCTED.search(code) and not code.lstrip().startswith("class "):
                builders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert builders == []


def test_the_builder_scan_sees_a_constructor():
    assert _CONSTRUCTED.search('    raise TaskError(key, name, "x")')
    assert _CONSTRUCTED.search("error = WorkerCrashedError(k, n, m)")
    assert not _CONSTRUCTED.search("except TaskError as error:")
    assert not _CONSTRUCTED.search("isinstance(exc, TaskError)")
    assert not _CONSTRUCTED.search("failures.closed_error(key, name)")


def test_failures_is_pure():
    source = (SRC / "failures.py").read_text()
    imports = re.findall(r"^(?:from|import) (\S+)", source, re.MULTILINE)
    assert set(imports) <= {"__future__", "pickle", "signal", "dataclasses", "typing", ".errors"}


def test_what_a_backend_finds_keeps_its_exception_types_and_texts():
    exc = TypeError("no")
    found = [
        (failures.unimportable_task("f", exc), RuntimeError, "a worker could not load task 'f': "),
        (failures.unsendable_task("f", exc), pickle.PicklingError, "cannot be pickled: TypeError"),
        (failures.unreturnable_result("f", exc), pickle.PicklingError, "pickled to return it"),
        (failures.unshippable_result("k", "f", exc), pickle.PicklingError, "TypeError: no (key k)"),
        (failures.unloadable_result("f", exc), RuntimeError, "could not be unpickled: TypeError"),
        (failures.unloadable_input("k", "f", exc), RuntimeError, "an input of task 'f' could"),
    ]
    for error, kind, text in found:
        assert type(error) is kind and text in str(error), str(error)
    assert str(failures.unsendable_task("f", exc, "k")).endswith("TypeError: no (key k)")
    assert "PYTHONPATH" in str(failures.unimportable_task("f", exc))
    missing = ModuleNotFoundError("No module named 'usermod'", name="usermod")
    assert "module 'usermod' must be importable" in str(failures.unimportable_task("f", missing))


# -- a task's error is also of the class the task raised ----------------------------------------


class CodedError(Exception):
    """A user's exception whose __init__ takes other arguments than it passes on."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raised(exc: BaseException) -> ox.TaskError:
    return failures.caller_error(TaskFailure("k-1", "load", exc, "Traceback ...\n"))


@pytest.mark.parametrize(
    "exc",
    [
        ZeroDivisionError("division by zero"),
        KeyError("missing"),
        FileNotFoundError(2, "No such file or directory", "in.tif"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        CodedError("bad tile", 7),
        pickle.PicklingError("cannot pickle"),
    ],
)
def test_a_task_error_is_also_what_the_task_raised_and_pickles_as_such(exc):
    error = raised(exc)
    assert isinstance(error, type(exc)) and isinstance(error, ox.TaskError)
    assert error.raised is type(exc) and error.__cause__ is exc
    assert str(error).startswith("task 'load' failed: ") and (error.key, error.name) == (
        "k-1",
        "load",
    )
    for copy in (error, pickle.loads(pickle.dumps(error))):
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.key, copy.name) == ("k-1", "load")
        if isinstance(exc, OSError):  # except OSError as e: e.filename reads the task's
            assert (copy.errno, copy.filename) == (2, "in.tif")
        if isinstance(exc, CodedError):
            assert copy.code == 7


def test_one_class_per_pair_and_the_types_that_stay_plain():
    assert type(raised(ValueError("a"))) is type(raised(ValueError("b")))
    for exc in (SystemExit(3), KeyboardInterrupt(), GeneratorExit()):  # not an Exception
        assert type(raised(exc)) is ox.TaskError
    inner = raised(ValueError("inner"))  # a task that ran an orchestrator of its own
    assert type(raised(inner)) is ox.TaskError


def test_upstream_canary_and_map_errors_keep_the_class_of_the_first_failure():
    failure = TaskFailure("a-1", "a", KeyError("x"))
    cause = failures.caller_error(failure)
    upstream = failures.upstream_error("b-2", "b", failure, cause)
    canary = failures.canary_error(cause, 2)
    batch = failures.map_batch_error(cause, "square", 0, 3)
    for error, kind in (
        (upstream, ox.UpstreamTaskError),
        (canary, ox.CanaryError),
        (batch, ox.TaskError),
    ):
        assert isinstance(error, KeyError) and untyped_class(error) is kind
    assert upstream.upstream_key == "a-1"
    crash = failures.crash_error("a-1", "a", 3, 99)  # a verdict has no class of the task's
    assert type(failures.upstream_error("b-2", "b", crash, crash)) is ox.UpstreamTaskError


def test_timeouts_are_timeout_errors():
    assert isinstance(failures.timeout_error("k", "n", 1.0), TimeoutError)
    assert isinstance(failures.stall_error("k", "n", 1.0), TimeoutError)


def test_the_warnings_of_limits_warn_and_the_preload_error():
    assert failures.timeout_warning("k", "f", 0.5) == (
        "task 'f' has run longer than per_job_timeout=0.5 s; limits='warn': it keeps running "
        "(key k)"
    )
    assert failures.memory_warning("k", "f", 1234.4, 1000) == (
        "task 'f' made its worker use 1,234 MB, over max_ram_per_worker=1,000 MB; "
        "limits='warn': the task keeps running (key k)"
    )
    missing = ModuleNotFoundError("No module named 'b'", name="b")
    assert failures.preload_error(["a", "b"], missing) == (
        "key 'preload': module 'b' could not be imported in a worker: "
        "ModuleNotFoundError: No module named 'b'"
    )
    assert "one of the modules ['a', 'b']" in failures.preload_error(("a", "b"), OSError("x"))
