"""Configuration: validation, errors that help, frozen dataclasses, files."""

from __future__ import annotations

import dataclasses
import json

import pytest

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


def test_key_of_another_mode_says_which_modes_have_it():
    with pytest.raises(ox.ConfigError) as info:
        parse_config(mode="sequential", nb_workers=2)
    message = str(info.value)
    assert "does not apply to mode 'sequential'" in message
    assert "multiprocessing" in message and "local_dask" in message


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
