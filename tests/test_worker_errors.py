"""What a user sees when a worker cannot run a script's task, run as a user runs a script: a module
the workers cannot import, a task of the script that raises, a script without the
``if __name__ == "__main__":`` guard."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

MODES = ["multiprocessing", "local_dask"]
SCRIPT_SECONDS = 120  # a hang costs this much; each script takes a few seconds


def run_script(path, *args):
    """Run the script as a user would, under a deadline."""
    return subprocess.run(
        [sys.executable, str(path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_SECONDS,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


UNIMPORTABLE = """
    import sys
    import orchestrix as ox

    if __name__ == "__main__":
        sys.path.insert(0, sys.argv[2])  # the caller finds the module, the workers do not
        import usermod
        sys.path.remove(sys.argv[2])
        with ox.Orchestrator(mode=sys.argv[1], nb_workers=1, progress=False) as orch:
            try:
                orch.compute(usermod.double(3))
            except ox.TaskError as error:
                print(error)
"""


def test_a_module_the_workers_cannot_import_is_named_alike_in_every_mode(tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    write(
        modules / "usermod.py",
        "import orchestrix as ox\n\n@ox.task\ndef double(x):\n    return 2 * x\n",
    )
    script = write(tmp_path / "imports.py", UNIMPORTABLE)
    messages = []
    for mode in MODES:
        done = run_script(script, mode, modules)
        assert done.returncode == 0, done.stderr
        messages.append(done.stdout.split(" (key ")[0])
    assert messages[0] == messages[1]
    assert "module 'usermod' must be importable on the workers" in messages[0]
    assert "PYTHONPATH" in messages[0]


FAILING = """
    import sys
    import traceback
    import orchestrix as ox

    def boom(x):
        raise ValueError(f"boom {x}")

    if __name__ == "__main__":
        with ox.Orchestrator(mode=sys.argv[1], nb_workers=1, progress=False) as orch:
            try:
                orch.compute(ox.task(boom)(1))
            except ValueError as error:
                print(error.__cause__.__cause__)  # the worker's traceback
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_traceback_shows_the_script_file_line_and_source(tmp_path, mode):
    script = write(tmp_path / "failing.py", FAILING)
    done = run_script(script, mode)
    assert done.returncode == 0, done.stderr
    assert f'File "{script}", line 7, in boom' in done.stdout
    assert 'raise ValueError(f"boom {x}")' in done.stdout
    assert "<dynamic-code>" not in done.stdout


UNGUARDED = """
    import sys
    import orchestrix as ox

    @ox.task
    def triple(x):
        return 3 * x

    with ox.Orchestrator(mode=sys.argv[1], nb_workers=2, progress=False) as orch:
        print(orch.compute([triple(i) for i in range(4)]))
"""


def test_a_script_without_the_main_guard_runs_on_multiprocessing(tmp_path):
    done = run_script(write(tmp_path / "unguarded.py", UNGUARDED), "multiprocessing")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 3, 6, 9]"


def test_a_script_without_the_main_guard_fails_at_once_in_one_line_on_local_dask(tmp_path):
    script = write(tmp_path / "unguarded.py", UNGUARDED)
    done = run_script(script, "local_dask")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) < 20, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("orchestrix.errors.OrchestrixError: local_dask re-runs")
    assert f"{script} in each worker" in last and "line 9" in last
    assert 'under `if __name__ == "__main__":`' in last
    assert "Nanny" not in done.stderr
