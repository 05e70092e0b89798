"""CARS's orchestrator configurations are accepted as they are; resolve_config starts nothing.

The dicts below are what CARS 1.3's ``check_conf`` of each cluster writes (every key it knows,
with its defaults): a key of another orchestrix mode or a CARS key orchestrix has no use for is
dropped with one ConfigWarning, ``mode: "mp"`` is multiprocessing, and a typo is still an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orchestrix as ox
from orchestrix.config import CONFIG_CLASSES, load_config_file, parse_config
from orchestrix.sizing import read_machine_facts, size_pool

_DASK = {
    "use_memory_logger": False,
    "nb_workers": 2,
    "task_timeout": 600,
    "max_ram_per_worker": 2000,
    "walltime": "00:59:00",
    "config_name": "unknown",
    "activate_dashboard": False,
    "python": None,
    "profiling": {},
}
_MP = {
    "mp_mode": "forkserver",
    "max_ram_per_worker": 2000,
    "nb_workers": 2,
    "task_timeout": 600,
    "max_tasks_per_worker": 10,
    "dump_to_disk": True,
    "per_job_timeout": 600,
    "factorize_tasks": True,
    "profiling": {},
}
_OF_JOBS = "(it is a key of pbs_dask, slurm_dask); ignored"
_CONFIG_NAME = "(CARS's name for the dask configuration it saves; orchestrix saves none); ignored"
#: mode -> (the configuration as CARS writes it, the warnings it gets)
CARS = {
    "sequential": (
        {"mode": "sequential", "max_ram_per_worker": 2000, "profiling": {}},
        [
            "key 'max_ram_per_worker' does not apply to mode 'sequential' (it is a key of "
            "multiprocessing, auto, local_dask, pbs_dask, slurm_dask); ignored"
        ],
    ),
    "multiprocessing": ({"mode": "multiprocessing", **_MP}, []),
    "mp": ({"mode": "mp", **_MP}, []),
    "local_dask": (
        {"mode": "local_dask", **_DASK},
        [
            f"key 'walltime' does not apply to mode 'local_dask' {_OF_JOBS}",
            f"key 'config_name' has no effect in mode 'local_dask' {_CONFIG_NAME}",
            f"key 'python' does not apply to mode 'local_dask' {_OF_JOBS}",
        ],
    ),
    "pbs_dask": (
        {"mode": "pbs_dask", **_DASK},
        [f"key 'config_name' has no effect in mode 'pbs_dask' {_CONFIG_NAME}"],
    ),
    "slurm_dask": (
        {"mode": "slurm_dask", **_DASK, "account": "proj", "qos": None},
        [f"key 'config_name' has no effect in mode 'slurm_dask' {_CONFIG_NAME}"],
    ),
}


def _parsed(options, parse=parse_config):
    """The config and the ConfigWarnings' messages of ``parse(options)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = parse(options)
    assert all(issubclass(w.category, ox.ConfigWarning) for w in caught), caught
    return config, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", CARS)
def test_a_cars_configuration_is_accepted_with_one_warning_per_ignored_key(name):
    options, expected = CARS[name]
    config, messages = _parsed(options)
    assert messages == expected
    mode = "multiprocessing" if name == "mp" else name
    assert type(config) is CONFIG_CLASSES[mode] and config.mode == mode
    data = config.to_dict()
    dropped = {key for key in options if key not in data}
    assert dropped == {message.split("'")[1] for message in expected}
    for key, value in options.items():
        if key not in dropped | {"mode", "profiling"}:
            assert data[key] == value, key
    assert config.profiling == ox.ProfilingConfig()  # CARS's "profiling": {} is the default


@pytest.mark.parametrize("name", ["sequential", "local_dask"])
def test_the_warning_names_the_callers_line(name):
    options, expected = CARS[name]
    for call in (parse_config, ox.resolve_config):
        with pytest.warns(ox.ConfigWarning) as caught:
            call(options)
        assert [str(w.message) for w in caught] == expected
        assert {w.filename for w in caught} == {__file__}


def test_orchestrator_and_from_file_accept_a_cars_configuration(tmp_path):
    options, expected = CARS["sequential"]
    with pytest.warns(ox.ConfigWarning, match="'max_ram_per_worker' does not apply"):
        orch = ox.Orchestrator(options)
    with orch:
        assert orch.compute(ox.task(abs)(-2)) == 2
    assert not hasattr(orch.config, "max_ram_per_worker")
    cars = tmp_path / "cars.json"
    cars.write_text(json.dumps({"inputs": {}, "orchestrator": {**options, "config_name": "x"}}))
    with pytest.warns(ox.ConfigWarning) as caught:
        ox.Orchestrator.from_file(cars, out_dir=tmp_path / "run").close()
    assert [str(w.message) for w in caught] == [
        *expected,
        f"key 'config_name' has no effect in mode 'sequential' {_CONFIG_NAME}",
    ]
    written = json.loads((tmp_path / "run" / "used_orchestrator.json").read_text())
    assert "max_ram_per_worker" not in written and "config_name" not in written


def test_load_config_file_reads_a_cars_yaml_section(tmp_path):
    options, expected = CARS["local_dask"]
    path = tmp_path / "cars.yaml"
    lines = [f"  {key}: {json.dumps(value)}" for key, value in options.items()]
    path.write_text("orchestrator:\n" + "\n".join(lines) + "\n")
    assert load_config_file(path) == options  # the file as it is: parsing drops the keys
    config, messages = _parsed(load_config_file(path))
    assert messages == expected and config == parse_config({"mode": "local_dask", "nb_workers": 2})


def test_mp_is_the_multiprocessing_mode_quietly():
    config, messages = _parsed({"mode": "mp", "nb_workers": 3})
    assert messages == [] and config == parse_config(mode="multiprocessing", nb_workers=3)
    assert config.to_dict()["mode"] == "multiprocessing"
    assert parse_config({"mode": "mp"}, mode="sequential").mode == "sequential"  # keywords win
    _, messages = _parsed({"mode": "mp", "walltime": "00:10:00"})
    assert messages == [f"key 'walltime' does not apply to mode 'multiprocessing' {_OF_JOBS}"]


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "sequential", "nb_workers": "many"},
        {"mode": "sequential", "task_timeout": float("nan")},
        {"mode": "local_dask", "walltime": "1h", "python": 3},
        {"mode": "multiprocessing", "account": ["x"], "config_name": None},
    ],
)
def test_a_wrong_value_of_an_ignored_key_only_warns(options):
    config, messages = _parsed(options)
    assert len(messages) == len(options) - 1
    assert all(message.endswith("; ignored") for message in messages)
    assert config == parse_config(mode=options["mode"])


def test_a_typo_is_still_an_error_and_nothing_is_warned_first():
    options = {**CARS["local_dask"][0], "nb_worker": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ox.ConfigError, match="did you mean 'nb_workers'") as info:
            parse_config(options)
    assert caught == []
    assert "unknown key 'nb_worker' for mode 'local_dask'" in str(info.value)
    with pytest.raises(ox.ConfigError, match="did you mean 'mp_mode'"):
        parse_config(mode="mp", mp_mdoe="fork")


_OTHER_KEYS = sorted(
    {
        (mode, key)
        for mode, cls in CONFIG_CLASSES.items()
        for other in CONFIG_CLASSES.values()
        for key in other.key_names()
        if key not in cls.key_names()
    }
)


@settings(max_examples=200, deadline=None)
@given(
    where=st.sampled_from(_OTHER_KEYS),
    value=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
)
def test_any_value_of_a_key_of_another_mode_warns_once_and_is_dropped(where, value):
    mode, key = where
    options = {"mode": mode, "account": "proj"} if mode == "slurm_dask" else {"mode": mode}
    config, messages = _parsed({**options, key: value})
    assert messages == [message for message in messages if f"key {key!r}" in message]
    assert len(messages) == 1 and key not in config.to_dict()


# -- resolve_config --------------------------------------------------------------------------------


def test_resolve_config_sizes_the_pool_and_starts_no_process():
    before = psutil.Process().children(recursive=True)
    config = ox.resolve_config({"mode": "mp"}, max_ram_per_worker=1000)
    assert isinstance(config, ox.MultiprocessingConfig)
    assert isinstance(config.nb_workers, int) and config.nb_workers >= 1
    expected = size_pool(read_machine_facts(), "auto", 1000).nb_workers
    assert config.nb_workers == expected and config.max_ram_per_worker == 1000
    dask = ox.resolve_config(mode="local_dask", nb_workers="auto")
    assert isinstance(dask.nb_workers, int)
    # equal rather than empty: a forkserver that an earlier test started lives on
    assert psutil.Process().children(recursive=True) == before


def test_resolve_config_is_what_the_orchestrator_runs_with(tmp_path):
    options = {"mode": "sequential", "out_dir": str(tmp_path), "profiling": {}}
    with ox.Orchestrator(options, factorize_tasks=False) as orch:
        assert ox.resolve_config(options, factorize_tasks=False) == orch.config
    given = ox.resolve_config(mode="auto", nb_workers=1)
    assert given.nb_workers == 1 and ox.resolve_config(given) == given


def test_resolve_config_refuses_what_the_orchestrator_refuses(monkeypatch):
    with pytest.raises(ox.ConfigError, match="did you mean 'nb_workers'"):
        ox.resolve_config(mode="auto", nb_worker=2)
    with pytest.raises(ox.ConfigError, match="'account' is required"):
        ox.resolve_config(mode="slurm_dask")
    with pytest.raises(ox.ConfigError, match="not even one worker fits"):
        ox.resolve_config(mode="auto", max_ram_per_worker=2**40)
    from orchestrix import backends

    monkeypatch.delitem(backends.AVAILABLE, "local_dask")
    with pytest.raises(ox.ConfigError, match="not built"):
        ox.resolve_config(mode="local_dask")


def test_resolve_config_imports_no_backend_and_no_dask():
    code = (
        "import sys, psutil, orchestrix as ox\n"
        "for mode in ('auto', 'local_dask', 'pbs_dask'):\n"
        "    assert isinstance(ox.resolve_config(mode=mode, nb_workers='auto').nb_workers, int)\n"
        "ox.resolve_config(mode='slurm_dask', account='proj')\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]\n"
        "backends = [m for m in sys.modules if m.startswith('orchestrix.backends.')]\n"
        "print(heavy, [m for m in backends if m != 'orchestrix.backends.base'],\n"
        "      psutil.Process().children())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] [] []"


def test_plan_prints_the_ignored_keys_of_a_cars_file_in_one_line_each(tmp_path):
    options, expected = CARS["local_dask"]
    path = tmp_path / "cars.json"
    path.write_text(json.dumps({"orchestrator": options}))
    result = subprocess.run(
        [sys.executable, "-m", "orchestrix", "plan", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"orchestrix: ConfigWarning: {m}" for m in expected]
    assert 'mode = "local_dask"' in result.stdout and "walltime" not in result.stdout
