"""The CARS plugin's tests (tests/test_cars_*.py), run in a pytest process of their own.

``import cars`` changes the whole process it runs in (dask's configuration, the environment of
threads, how exceptions pickle: see conftest.py): the plugin's tests import it, so they run apart
from the rest of the suite, which conftest.py keeps from collecting them here (this file's name
is outside their ``test_cars_*.py`` pattern, so that it is collected here, and not there).
Skipped without CARS.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.skipif(
    importlib.util.find_spec("cars") is None,
    reason='CARS is not installed (pip install ".[cars]")',
)
@pytest.mark.timeout(1800)
def test_cars_plugin_suite():
    modules = sorted(str(path) for path in HERE.glob("test_cars_*.py"))
    env = {**os.environ, "ORCHESTRIX_CARS_SESSION": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(done.stdout[-5000:])
    assert done.returncode == 0, f"{summary[0]}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
