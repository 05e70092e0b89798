"""The exception hierarchy and its behaviour across process boundaries."""

from __future__ import annotations

import pickle

import orchestrix as ox


def test_hierarchy():
    assert issubclass(ox.ConfigError, ox.OrchestrixError)
    assert issubclass(ox.ConfigError, ValueError)
    assert issubclass(ox.TaskError, ox.OrchestrixError)
    assert issubclass(ox.UpstreamTaskError, ox.TaskError)


def test_errors_pickle_with_their_fields():
    error = ox.UpstreamTaskError("b-1", "b", "b did not run", "a-2", "a")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.name, copy.upstream_key, copy.upstream_name) == ("b-1", "b", "a-2", "a")
    assert str(copy) == "b did not run"
    task_error = pickle.loads(pickle.dumps(ox.TaskError("k", "n", "msg")))
    assert (task_error.key, task_error.name, str(task_error)) == ("k", "n", "msg")


def test_remote_traceback_is_chained_as_in_concurrent_futures():
    from orchestrix.failures import TaskFailure, caller_error

    failure = TaskFailure(
        "k-1", "k", ValueError("x"), traceback_text="Traceback ...\nValueError: x"
    )
    error = caller_error(failure)
    assert isinstance(error.__cause__, ValueError)
    assert isinstance(error.__cause__.__cause__, ox.RemoteTraceback)
    assert "Traceback ..." in str(error.__cause__.__cause__)
