"""Configuration: validation, errors that help, frozen dataclasses, files."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orchestrix as ox
from orchestrix.config import CONFIG_CLASSES, MODES, parse_config


def test_every_mode_has_a_frozen_config_class():
    assert set(CONFIG_CLASSES) == set(MODES)
    config = parse_config(mode="multiprocessing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nb_workers = 3  # type: ignore[misc]


def test_cars_defaults():
    mp = parse_config(mode="multiprocessing")
    assert (mp.mp_mode, mp.nb_workers, mp.max_ram_per_worker) == ("forkserver", "auto", 2000)
    # CARS recycles workers every 10 tasks; orchestrix only when asked (it caps throughput).
    assert (mp.max_tasks_per_worker, mp.dump_to_disk, mp.per_job_timeout) == (None, True, 600)
    assert (mp.factorize_tasks, mp.task_timeout) == (True, 600)
    dask = parse_config(mode="local_dask")
    assert (dask.nb_workers, dask.use_memory_logger, dask.activate_dashboard) == (2, False, False)
    slurm = parse_config(mode="slurm_dask", account="proj")
    assert (slurm.walltime, slurm.qos, slurm.python) == ("00:59:00", None, None)
    assert parse_config().profiling == ox.ProfilingConfig(mode="timing", loop_testing=False)


def test_mistyped_key_names_the_right_one_in_one_line():
    with pytest.raises(ox.ConfigError) as info:
        parse_config(mode="multiprocessing", nb_worker=4)
    message = str(info.value)
    assert "\n" not in message
    assert "'nb_worker'" in message and "did you mean 'nb_workers'" in message
    assert "multiprocessing" in message and "valid keys:" in message


def test_key_of_another_mode_warns_which_modes_have_it_and_is_ignored():
    with pytest.warns(ox.ConfigWarning) as caught:
        config = parse_config(mode="sequential", nb_workers=2)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "does not apply to mode 'sequential'" in message and message.endswith("; ignored")
    assert "multiprocessing" in message and "local_dask" in message
    assert "nb_workers" not in config.to_dict()


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_config(mode="nope")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"mode": "multiprocessing", "nb_workers": 0}, "positive int or 'auto', got 0"),
        ({"mode": "multiprocessing", "nb_workers": True}, "got True (bool)"),
        ({"mode": "multiprocessing", "nb_workers": "many"}, "got 'many' (str)"),
        ({"mode": "multiprocessing", "mp_mode": "threads"}, "forkserver, fork, spawn"),
        ({"mode": "multiprocessing", "max_ram_per_worker": -5}, "positive number of MB"),
        ({"mode": "multiprocessing", "per_job_timeout": "10"}, "number of seconds or None"),
        ({"mode": "multiprocessing", "retries": -1}, "int >= 0"),
        ({"mode": "multiprocessing", "dump_to_disk": "yes"}, "expects a bool"),
        ({"mode": "sequential", "factorize_tasks": 1}, "expects a bool, got 1 (int)"),
        ({"mode": "pbs_dask", "walltime": "1h"}, "HH:MM:SS"),
        ({"mode": "slurm_dask"}, "'account' is required"),
        ({"mode": "sequential", "profiling": {"mode": "perf"}}, "'profiling.mode'"),
        ({"mode": "sequential", "profiling": {"mdoe": "timing"}}, "did you mean 'mode'"),
        ({"mode": "sequential", "profiling": "timing"}, "a dict with keys"),
        ({"mode": "multiproc"}, "did you mean 'multiprocessing'"),
    ],
)
def test_wrong_values_name_key_expected_and_given(options, fragment):
    with pytest.raises(ox.ConfigError) as info:
        parse_config(options)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_dict_and_keywords_merge_keywords_win():
    config = parse_config({"mode": "multiprocessing", "nb_workers": 4}, nb_workers=3)
    assert config.nb_workers == 3 and config.mode == "multiprocessing"


def test_to_dict_round_trips():
    config = parse_config(
        mode="pbs_dask", nb_workers=8, profiling={"mode": "cprofile"}, out_dir="run"
    )
    data = config.to_dict()
    assert data["profiling"] == {"mode": "cprofile", "loop_testing": False}
    json.dumps(data)
    assert parse_config(data) == config
    assert parse_config(config) == config


def test_unbuilt_mode_is_refused_with_a_clear_error(monkeypatch):
    from orchestrix import backends

    monkeypatch.delitem(backends.AVAILABLE, "local_dask")
    with pytest.raises(ox.ConfigError, match="not built"):
        ox.Orchestrator(mode="local_dask", nb_workers=2)


def test_profiling_that_writes_files_needs_an_out_dir():
    with pytest.raises(
        ox.ConfigError, match="'memray' profiling, which writes files: set 'out_dir'"
    ):
        ox.Orchestrator(mode="sequential", profiling={"mode": "memray"})


def test_orchestrator_accepts_a_cars_style_dict(tmp_path):
    with ox.Orchestrator({"mode": "sequential", "out_dir": str(tmp_path)}) as orch:
        assert orch.config.out_dir == str(tmp_path)
        assert isinstance(orch.config, ox.SequentialConfig)


def test_used_config_is_written_to_out_dir(tmp_path):
    out = tmp_path / "run"
    with ox.Orchestrator(mode="sequential", out_dir=out, factorize_tasks=False) as orch:
        written = json.loads((out / "used_orchestrator.json").read_text())
    assert written == orch.config.to_dict()
    assert written["factorize_tasks"] is False and written["out_dir"] == str(out)


def test_no_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with ox.Orchestrator(mode="sequential") as orch:
        orch.compute(ox.task(abs)(-1))
    assert list(tmp_path.iterdir()) == []


def test_from_file_json_yaml_and_cars_section(tmp_path):
    (tmp_path / "conf.json").write_text(
        json.dumps({"mode": "sequential", "factorize_tasks": False})
    )
    (tmp_path / "conf.yaml").write_text("mode: sequential\nfactorize_tasks: false\n")
    (tmp_path / "cars.json").write_text(
        json.dumps({"inputs": {}, "orchestrator": {"mode": "sequential", "factorize_tasks": False}})
    )
    for name in ("conf.json", "conf.yaml", "cars.json"):
        with ox.Orchestrator.from_file(tmp_path / name) as orch:
            assert orch.config.factorize_tasks is False
    with ox.Orchestrator.from_file(tmp_path / "conf.json", factorize_tasks=True) as orch:
        assert orch.config.factorize_tasks is True


def test_from_file_with_a_typo_names_the_key(tmp_path):
    (tmp_path / "conf.yaml").write_text("mode: multiprocessing\nmax_ram_per_workers: 4000\n")
    with pytest.raises(ox.ConfigError, match="did you mean 'max_ram_per_worker'"):
        ox.Orchestrator.from_file(tmp_path / "conf.yaml")


def test_from_file_invalid_json(tmp_path):
    (tmp_path / "bad.json").write_text("{mode: ")
    with pytest.raises(ox.ConfigError, match="not valid JSON"):
        ox.Orchestrator.from_file(tmp_path / "bad.json")


# -- every wrong value is a ConfigError (issue 12) ------------------------------------------------

_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"mode": ["x"]}, "key 'mode' expects one of"),
        ({"mode": {"a": 1}}, "key 'mode' expects one of"),
        ({"mode": ("sequential",)}, "key 'mode' expects one of"),
        ({"mode": "multiprocessing", "max_ram_per_worker": _INF}, "'max_ram_per_worker'"),
        ({"mode": "multiprocessing", "max_ram_per_worker": -_INF}, "'max_ram_per_worker'"),
        ({"mode": "multiprocessing", "max_ram_per_worker": _NAN}, "'max_ram_per_worker'"),
        ({"mode": "multiprocessing", "max_ram_per_worker": 1e308}, "'max_ram_per_worker'"),
        ({"mode": "local_dask", "max_ram_per_worker": True}, "got True (bool)"),
        ({"mode": "multiprocessing", "task_timeout": _NAN}, "'task_timeout'"),
        ({"mode": "multiprocessing", "task_timeout": _INF}, "'task_timeout'"),
        ({"mode": "multiprocessing", "per_job_timeout": _INF}, "'per_job_timeout'"),
        ({"mode": "local_dask", "per_job_timeout": 1e300}, "'per_job_timeout'"),
        ({"mode": "multiprocessing", "per_job_timeout": -1}, "'per_job_timeout'"),
        ({"mode": "multiprocessing", "retries": True}, "'retries'"),
        ({"mode": "multiprocessing", "retries": 1.0}, "'retries'"),
        ({"mode": "sequential", "canary": -1}, "'canary'"),
        ({"mode": "sequential", "canary": False}, "'canary'"),
        ({"mode": "multiprocessing", "max_tasks_per_worker": 0}, "'max_tasks_per_worker'"),
        ({"mode": "multiprocessing", "nb_workers": 2.0}, "'nb_workers'"),
        ({"mode": "multiprocessing", "nb_workers": ["auto"]}, "'nb_workers'"),
        ({"mode": "multiprocessing", "mp_mode": ["fork"]}, "'mp_mode'"),
        ({"mode": "multiprocessing", "mp_mode": {"fork": 1}}, "'mp_mode'"),
        ({"mode": "sequential", "out_dir": "a\0b"}, "'out_dir'"),
        ({"mode": "multiprocessing", "dump_dir": 3}, "'dump_dir'"),
        ({"mode": "sequential", "profiling": {"mode": ["timing"]}}, "'profiling.mode'"),
        ({"mode": "sequential", "profiling": {1: "timing"}}, "'profiling.1'"),
        ({"mode": "pbs_dask", "job_extra": "--x"}, "'job_extra'"),
        ({"mode": "pbs_dask", "cores": 0}, "'cores'"),
    ],
)
def test_wrong_values_are_config_errors_naming_the_key(options, fragment):
    with pytest.raises(ox.ConfigError) as info:
        parse_config(options)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options", ["mode: sequential", 3, [("mode", "sequential")]])
def test_a_configuration_that_is_not_a_mapping_is_a_config_error(options):
    with pytest.raises(ox.ConfigError, match="expects a mapping"):
        ox.Orchestrator(options)


def test_an_array_value_is_a_config_error_on_one_line():
    numpy = pytest.importorskip("numpy")
    for key in ("nb_workers", "mp_mode", "max_ram_per_worker", "dump_dir"):
        with pytest.raises(ox.ConfigError, match=f"'{key}'") as info:
            parse_config(mode="multiprocessing", **{key: numpy.zeros((4, 4))})
        assert "\n" not in str(info.value)


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("mode: [sequential\n")
    with pytest.raises(ox.ConfigError, match=r"bad\.yaml is not valid YAML"):
        ox.Orchestrator.from_file(tmp_path / "bad.yaml")


def test_paths_are_made_absolute_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_config(mode="multiprocessing", out_dir="run", dump_dir=tmp_path / "dumps")
    assert config.out_dir == str(tmp_path / "run")
    assert config.dump_dir == str(tmp_path / "dumps")
    monkeypatch.chdir("/")
    assert parse_config(config) == config


_ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=4)
    | st.sampled_from(["auto", "fork", "timing", "00:10:00", "sequential", "", "\0"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=2)
    ),
    max_leaves=6,
)
_KEYS = sorted({(mode, key) for mode, cls in CONFIG_CLASSES.items() for key in cls.key_names()})


@settings(max_examples=400, deadline=None)
@given(where=st.sampled_from(_KEYS), value=_ANY_VALUE)
def test_any_value_of_any_key_is_accepted_or_a_config_error(where, value):
    """Every key of every mode, any value: accepted (and then valid), or a ConfigError in one
    line that names the key; never a TypeError, KeyError or a crash."""
    mode, key = where
    options = {"mode": mode, "account": "proj"} if mode == "slurm_dask" else {"mode": mode}
    options[key] = value
    try:
        config = parse_config(options)
    except ox.ConfigError as error:
        message = str(error)
        assert "\n" not in message
        assert f"'{key}" in message
        return
    accepted = getattr(config, key)
    if isinstance(accepted, float):
        assert math.isfinite(accepted)
    json.dumps(config.to_dict())
