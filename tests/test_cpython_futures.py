"""CPython's own tests of ``concurrent.futures`` (ExecutorTest, WaitTests, AsCompletedTests),
run with ``Orchestrator(mode="multiprocessing")`` as the executor, for forkserver and spawn.

The test file is CPython's, not ours: Debian's ``libpython3.11-testsuite`` package installs it
(``.ci/run`` does, for CI). Without it, or on another Python than 3.11, this module skips.

One test is left out: ``test_max_workers_negative`` checks the error of
``ProcessPoolExecutor(max_workers=0)``, a constructor argument the Orchestrator does not have
(its ``nb_workers`` refuses 0 with a ConfigError, a ValueError, of its own wording).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import unittest

import pytest

import orchestrix as ox

SOURCE = "/usr/lib/python{}.{}/test/test_concurrent_futures.py".format(*sys.version_info[:2])
MODULE = "cpython_test_concurrent_futures"
LEFT_OUT = {"test_max_workers_negative"}

if sys.version_info[:2] != (3, 11) or not os.path.exists(SOURCE):
    pytest.skip(
        f"CPython's test_concurrent_futures for Python 3.11 is not installed at {SOURCE} "
        "(apt-get install libpython3.11-testsuite)",
        allow_module_level=True,
    )


def _load_cpython_tests(directory: str):
    """Import CPython's test module under a name the workers can import too (its task
    functions are pickled by reference): a link to it in ``directory``, put on the path of
    this process and, through PYTHONPATH, of the workers."""
    link = os.path.join(directory, f"{MODULE}.py")
    if not os.path.exists(link):
        os.symlink(SOURCE, link)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    paths = [directory, *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    spec = importlib.util.spec_from_file_location(MODULE, link)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    return module


def _suite(module) -> unittest.TestSuite:
    """The three test classes, for forkserver and spawn, with the Orchestrator as executor."""
    suite = unittest.TestSuite()
    for method in ("forkserver", "spawn"):

        def orchestrator(max_workers, mp_context=None, _method=method, **_):
            return ox.Orchestrator(mode="multiprocessing", nb_workers=max_workers, mp_mode=_method)

        mixin = type(
            f"Orchestrix{method.title()}Mixin",
            (module.ExecutorMixin,),
            {"executor_type": staticmethod(orchestrator), "ctx": method},
        )
        for tests in (module.ExecutorTest, module.WaitTests, module.AsCompletedTests):
            case = type(f"{tests.__name__}_{method}", (tests, mixin, module.BaseTestCase), {})
            for name in unittest.TestLoader().getTestCaseNames(case):
                if name not in LEFT_OUT:
                    suite.addTest(case(name))
    return suite


@pytest.mark.timeout(600)
def test_cpython_concurrent_futures_suite_passes_with_the_orchestrator(tmp_path_factory):
    module = _load_cpython_tests(str(tmp_path_factory.mktemp("cpython")))
    suite = _suite(module)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    failed = [f"{test.id()}:\n{text}" for test, text in result.failures + result.errors]
    passed = result.testsRun - len(failed)
    print(f"CPython test_concurrent_futures: {passed} of {result.testsRun} passed")
    assert result.testsRun == 42
    assert not failed, "\n\n".join(failed)
