"""Pool sizing of the ``auto`` mode: pure rules on made-up machines, and the ``plan`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrix.config import AutoConfig, MultiprocessingConfig, SequentialConfig, parse_config
from orchestrix.errors import ConfigError
from orchestrix.sizing import (
    MachineFacts,
    PoolSize,
    read_machine_facts,
    resolve_pool_config,
    size_pool,
    usable_cpus,
)


def facts(
    cpu_count: int = 8,
    affinity_cpus: int | None = 8,
    cgroup_cpu_quota: float | None = None,
    slurm_cpus: int | None = None,
    available_ram_mb: float = 64_000.0,
) -> MachineFacts:
    return MachineFacts(cpu_count, affinity_cpus, cgroup_cpu_quota, slurm_cpus, available_ram_mb)


def fake_root(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake file system root holding ``files`` (path relative to the root -> content)."""
    for relative, content in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return tmp_path


# --- read_machine_facts on fake trees -------------------------------------------------------------


def test_read_facts_without_limits(tmp_path):
    got = read_machine_facts(environ={}, root=tmp_path)
    assert got.cgroup_cpu_quota is None
    assert got.slurm_cpus is None
    assert got.cpu_count == (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert got.affinity_cpus == len(os.sched_getaffinity(0))
    assert got.available_ram_mb > 0


def test_cgroup_v2_quota(tmp_path):
    root = fake_root(tmp_path, {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota == 2.0


def test_cgroup_v2_fractional_quota(tmp_path):
    root = fake_root(tmp_path, {"sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota == 1.5


def test_cgroup_v2_unlimited(tmp_path):
    root = fake_root(tmp_path, {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota is None


def test_cgroup_v2_own_cgroup_and_ancestors_tightest_wins(tmp_path):
    root = fake_root(
        tmp_path,
        {
            "proc/self/cgroup": "0::/job/step\n",
            "sys/fs/cgroup/cpu.max": "800000 100000\n",
            "sys/fs/cgroup/job/cpu.max": "300000 100000\n",
            "sys/fs/cgroup/job/step/cpu.max": "max 100000\n",
        },
    )
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota == 3.0


def test_cgroup_v1_quota(tmp_path):
    root = fake_root(
        tmp_path,
        {
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "400000\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota == 4.0


def test_cgroup_v1_unlimited(tmp_path):
    root = fake_root(
        tmp_path,
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota is None


def test_cgroup_garbage_is_ignored(tmp_path):
    root = fake_root(tmp_path, {"sys/fs/cgroup/cpu.max": "lots of cpus\n"})
    assert read_machine_facts(environ={}, root=root).cgroup_cpu_quota is None


def test_slurm_cpus_per_task_beats_cpus_on_node(tmp_path):
    env = {"SLURM_CPUS_PER_TASK": "3", "SLURM_CPUS_ON_NODE": "16"}
    assert read_machine_facts(environ=env, root=tmp_path).slurm_cpus == 3


def test_slurm_cpus_on_node_alone(tmp_path):
    env = {"SLURM_CPUS_ON_NODE": "16"}
    assert read_machine_facts(environ=env, root=tmp_path).slurm_cpus == 16


def test_slurm_unparsable_value_is_ignored(tmp_path):
    env = {"SLURM_CPUS_PER_TASK": "two", "SLURM_CPUS_ON_NODE": "6"}
    assert read_machine_facts(environ=env, root=tmp_path).slurm_cpus == 6
    assert read_machine_facts(environ={"SLURM_CPUS_PER_TASK": ""}, root=tmp_path).slurm_cpus is None


# --- usable_cpus ----------------------------------------------------------------------------------


def test_usable_cpus_affinity_only():
    count, reason = usable_cpus(facts(cpu_count=16, affinity_cpus=6))
    assert count == 6
    assert "affinity 6" in reason and "no cgroup quota" in reason and "no SLURM" in reason


def test_usable_cpus_cpu_count_when_no_affinity():
    count, _ = usable_cpus(facts(cpu_count=12, affinity_cpus=None))
    assert count == 12


def test_usable_cpus_cgroup_quota_floors():
    count, reason = usable_cpus(facts(affinity_cpus=8, cgroup_cpu_quota=2.5))
    assert count == 2
    assert "cgroup quota 2.5" in reason


def test_usable_cpus_tiny_cgroup_quota_gives_one():
    assert usable_cpus(facts(affinity_cpus=8, cgroup_cpu_quota=0.5))[0] == 1


def test_usable_cpus_slurm_limits():
    count, reason = usable_cpus(facts(affinity_cpus=8, cgroup_cpu_quota=6.0, slurm_cpus=3))
    assert count == 3
    assert reason.startswith("3 CPUs")
    assert "SLURM 3" in reason


def test_usable_cpus_quota_above_affinity_does_not_raise_it():
    assert usable_cpus(facts(affinity_cpus=4, cgroup_cpu_quota=32.0, slurm_cpus=64))[0] == 4


# --- size_pool ------------------------------------------------------------------------------------


def test_ram_bound():
    pool = size_pool(facts(affinity_cpus=8, available_ram_mb=5_000), "auto", 2000)
    assert pool == PoolSize(1, 2000, pool.reasons)
    assert pool.reasons["nb_workers"] == (
        "1 = min(8 usable CPUs, floor(0.5 x 5,000 MB available / 2,000 MB per worker) = 1)"
    )


def test_ram_bound_several_workers():
    pool = size_pool(facts(affinity_cpus=16, available_ram_mb=20_000), "auto", 1000)
    assert pool.nb_workers == 10


def test_cpu_bound():
    pool = size_pool(facts(affinity_cpus=8, cgroup_cpu_quota=4.0, available_ram_mb=64_000))
    assert pool.nb_workers == 4
    assert pool.max_ram_per_worker == 2000
    assert pool.reasons["nb_workers"].startswith("4 = min(4 usable CPUs")
    assert "= 16)" in pool.reasons["nb_workers"]


def test_not_even_one_worker():
    with pytest.raises(ConfigError) as info:
        size_pool(facts(available_ram_mb=3_000), "auto", 2000)
    message = str(info.value)
    assert "\n" not in message
    assert "3,000 MB" in message
    assert "max_ram_per_worker" in message
    assert "at most 1,500 MB" in message


def test_suggested_limit_is_enough():
    # the suggested max_ram_per_worker must actually give one worker
    with pytest.raises(ConfigError, match=r"at most ([\d,]+) MB") as info:
        size_pool(facts(available_ram_mb=3_333.7), "auto", 4000)
    suggested = int(re.search(r"at most ([\d,]+) MB", str(info.value))[1].replace(",", ""))
    assert size_pool(facts(available_ram_mb=3_333.7), "auto", suggested).nb_workers == 1
    with pytest.raises(ConfigError):
        size_pool(facts(available_ram_mb=3_333.7), "auto", suggested + 1)


def test_explicit_int_is_kept():
    pool = size_pool(facts(affinity_cpus=2, available_ram_mb=1_000), 7, 2000)
    assert pool.nb_workers == 7
    assert pool.reasons["nb_workers"] == "given"


@pytest.mark.parametrize("bad", [0, -1, "many", True])
def test_invalid_nb_workers(bad):
    with pytest.raises(ConfigError, match="nb_workers"):
        size_pool(facts(), bad)


# --- resolve_pool_config --------------------------------------------------------------------------


def test_resolve_auto_config_on_this_machine():
    config = parse_config(mode="auto")
    assert config.nb_workers == "auto"
    resolved, reasons = resolve_pool_config(config)
    assert isinstance(resolved, AutoConfig)
    assert isinstance(resolved.nb_workers, int) and resolved.nb_workers >= 1
    assert "usable CPU" in reasons["nb_workers"]
    assert dataclasses.replace(resolved, nb_workers="auto") == config


def test_resolve_with_given_facts():
    config = parse_config(mode="multiprocessing", max_ram_per_worker=1000)
    resolved, reasons = resolve_pool_config(config, facts(affinity_cpus=8, available_ram_mb=6_000))
    assert isinstance(resolved, MultiprocessingConfig)
    assert resolved.nb_workers == 3
    assert resolved.max_ram_per_worker == 1000
    assert set(reasons) == {"nb_workers", "max_ram_per_worker"}


def test_resolve_keeps_explicit_int():
    config = parse_config(mode="auto", nb_workers=5)
    resolved, reasons = resolve_pool_config(config, facts(affinity_cpus=1))
    assert resolved == config
    assert reasons["nb_workers"] == "given"


def test_resolve_sequential_unchanged():
    config = parse_config(mode="sequential")
    resolved, reasons = resolve_pool_config(config, facts())
    assert isinstance(resolved, SequentialConfig)
    assert resolved is config
    assert reasons == {}


def test_resolve_raises_when_nothing_fits():
    config = parse_config(mode="auto", max_ram_per_worker=10_000)
    with pytest.raises(ConfigError, match="max_ram_per_worker"):
        resolve_pool_config(config, facts(available_ram_mb=4_000))


# --- python -m orchestrix plan --------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrix", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plan_auto():
    result = run_cli("plan", "--mode", "auto")
    if result.returncode == 2 and "not even one worker" in result.stderr:
        pytest.skip(f"this machine has too little free RAM: {result.stderr}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# machine:") and "RAM available" in lines[0]
    match = re.search(r"^nb_workers = (\d+)  # (.+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    assert int(match[1]) >= 1
    assert "usable CPU" in match[2]
    assert re.search(r'^mode = "auto"$', result.stdout, re.MULTILINE)
    assert re.search(r"^max_ram_per_worker = 2000  # ", result.stdout, re.MULTILINE)


def test_plan_max_ram_flag():
    result = run_cli("plan", "--max-ram-per-worker", "1.5")
    assert result.returncode == 0, result.stderr
    assert re.search(r'^mode = "auto"$', result.stdout, re.MULTILINE)  # plan's default mode
    assert re.search(r"^max_ram_per_worker = 1.5  # ", result.stdout, re.MULTILINE)
    assert re.search(r"^nb_workers = \d+  # \d+ = min\(", result.stdout, re.MULTILINE)


def test_plan_config_file_and_flags(tmp_path):
    path = tmp_path / "orchestrix.json"
    path.write_text(json.dumps({"orchestrator": {"mode": "multiprocessing", "nb_workers": 3}}))
    result = run_cli("plan", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert re.search(r'^mode = "multiprocessing"$', result.stdout, re.MULTILINE)
    assert re.search(r"^nb_workers = 3  # given$", result.stdout, re.MULTILINE)
    result = run_cli("plan", "--config", str(path), "--nb-workers", "5", "--mode", "auto")
    assert re.search(r"^nb_workers = 5  # given$", result.stdout, re.MULTILINE)
    assert re.search(r'^mode = "auto"$', result.stdout, re.MULTILINE)


def test_plan_typo_in_config_file(tmp_path):
    path = tmp_path / "orchestrix.json"
    path.write_text(json.dumps({"mode": "auto", "nb_worker": 2}))
    result = run_cli("plan", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "ConfigError" in result.stderr and "nb_workers" in result.stderr


def test_plan_missing_config_file(tmp_path):
    result = run_cli("plan", "--config", str(tmp_path / "absent.json"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
