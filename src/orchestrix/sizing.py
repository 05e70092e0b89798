"""Pool sizing of the ``auto`` mode, as pure functions of the machine's facts.

:func:`read_machine_facts` is the only function that looks at the machine (CPU counts, the cgroup
CPU quota, the SLURM allocation, the available RAM); everything else computes from a
:class:`MachineFacts`, so the sizing rules can be tested on made-up machines. The rule: as many
workers as usable CPUs, but no more than fit in half of the available RAM at ``max_ram_per_worker``
MB each.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = [
    "RAM_FRACTION",
    "MachineFacts",
    "PoolSize",
    "describe_facts",
    "read_machine_facts",
    "resolve_pool_config",
    "size_pool",
    "usable_cpus",
]

# The share of the available RAM that the workers of an ``auto`` pool may use together.
RAM_FRACTION = 0.5

_T = TypeVar("_T")


@dataclass(frozen=True)
class MachineFacts:
    """What the sizing needs to know about the machine; None where a limit is absent."""

    cpu_count: int  # os.cpu_count(), 1 when unknown
    affinity_cpus: int | None  # CPUs this process may run on (os.sched_getaffinity)
    cgroup_cpu_quota: float | None  # cgroup CPU bandwidth limit, in CPUs
    slurm_cpus: int | None  # SLURM_CPUS_PER_TASK, else SLURM_CPUS_ON_NODE
    available_ram_mb: float  # psutil.virtual_memory().available in MB


@dataclass(frozen=True)
class PoolSize:
    """A resolved pool size, with a one-line reason per key."""

    nb_workers: int
    max_ram_per_worker: float
    reasons: dict[str, str]


def read_machine_facts(
    environ: Mapping[str, str] = os.environ, root: str | os.PathLike[str] = "/"
) -> MachineFacts:
    """Read the facts of this machine; cgroup files are looked up under ``root``."""
    import psutil  # only when the machine is actually inspected

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return MachineFacts(
        cpu_count=os.cpu_count() or 1,
        affinity_cpus=affinity,
        cgroup_cpu_quota=read_cgroup_cpu_quota(root),
        slurm_cpus=read_slurm_cpus(environ),
        available_ram_mb=psutil.virtual_memory().available / 2**20,
    )


def read_slurm_cpus(environ: Mapping[str, str]) -> int | None:
    """SLURM_CPUS_PER_TASK if set and valid, else SLURM_CPUS_ON_NODE, else None."""
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        try:
            value = int(environ.get(name, "").strip())
        except ValueError:
            continue
        if value > 0:
            return value
    return None


def read_cgroup_cpu_quota(root: str | os.PathLike[str] = "/") -> float | None:
    """The tightest cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``) CPU limit, or None.

    The process's own cgroup (from ``/proc/self/cgroup``) and its ancestors are read when they
    exist, then the mount's top directory (what a container sees as its own cgroup)."""
    base = Path(root)
    mount = base / "sys" / "fs" / "cgroup"
    own = _own_cgroups(base / "proc" / "self" / "cgroup")
    limits: list[float] = []
    for directory in _with_ancestors(mount, own.get("", "/")):
        limit = _parse_cpu_max(_read(directory / "cpu.max"))
        if limit is not None:
            limits.append(limit)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for directory in _with_ancestors(mount / name, own.get("cpu", "/")):
            # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us; a quota of -1 means unlimited
            quota, period = (
                _read(directory / "cpu.cfs_quota_us"),
                _read(directory / "cpu.cfs_period_us"),
            )
            limit = _ratio(quota, period)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups(path: Path) -> dict[str, str]:
    """Controller -> cgroup path from /proc/self/cgroup ('' is the cgroup v2 hierarchy)."""
    paths: dict[str, str] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _with_ancestors(mount: Path, cgroup: str) -> list[Path]:
    """The cgroup's directory under the mount and its parents up to the mount, deduplicated."""
    parts = [part for part in cgroup.split("/") if part and part not in (".", "..")]
    directories = [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return list(dict.fromkeys(directories))


def _parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" -> QUOTA / PERIOD CPUs; "max PERIOD" -> None."""
    fields = (text or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _ratio(quota: str | None, period: str | None) -> float | None:
    try:
        quota_us, period_us = int(quota or ""), int(period or "")
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def usable_cpus(facts: MachineFacts) -> tuple[int, str]:
    """The CPUs a pool may use, and why: affinity (or cpu_count), cgroup quota, SLURM count."""
    if facts.affinity_cpus is not None:
        count, parts = facts.affinity_cpus, [f"affinity {facts.affinity_cpus}"]
    else:
        count, parts = facts.cpu_count, [f"cpu_count {facts.cpu_count} (no affinity)"]
    if facts.cgroup_cpu_quota is not None:
        count = min(count, max(1, math.floor(facts.cgroup_cpu_quota)))
        parts.append(f"cgroup quota {facts.cgroup_cpu_quota:g}")
    else:
        parts.append("no cgroup quota")
    if facts.slurm_cpus is not None:
        count = min(count, facts.slurm_cpus)
        parts.append(f"SLURM {facts.slurm_cpus}")
    else:
        parts.append("no SLURM allocation")
    count = max(1, count)
    return count, f"{count} CPU{'s' if count != 1 else ''}: {', '.join(parts)}"


def size_pool(
    facts: MachineFacts, nb_workers: int | str = "auto", max_ram_per_worker: float = 2000
) -> PoolSize:
    """Resolve ``nb_workers`` ('auto' or an int) against the machine; see the module docstring."""
    available, budget = facts.available_ram_mb, RAM_FRACTION * facts.available_ram_mb
    shown = _mb(math.floor(available))  # whole MB in messages
    valid_int = isinstance(nb_workers, int) and not isinstance(nb_workers, bool) and nb_workers > 0
    if not (valid_int or nb_workers == "auto"):
        raise ConfigError(f"key 'nb_workers' expects a positive int or 'auto', got {nb_workers!r}")
    if isinstance(nb_workers, int):
        count, why = nb_workers, "given"
    else:
        cpus, _ = usable_cpus(facts)
        by_ram = math.floor(budget / max_ram_per_worker)
        if by_ram < 1:
            most = _mb(math.floor(budget))
            fix = f"lower max_ram_per_worker to at most {most} MB, or " if budget >= 1 else ""
            raise ConfigError(
                f"not even one worker fits in memory: {shown} MB of RAM available, half of it "
                f"({most} MB) is budgeted for workers, and max_ram_per_worker asks "
                f"{_mb(max_ram_per_worker)} MB per worker; {fix}free memory"
            )
        count = min(cpus, by_ram)
        why = (
            f"{count} = min({cpus} usable CPU{'s' if cpus != 1 else ''}, floor({RAM_FRACTION:g} x "
            f"{shown} MB available / {_mb(max_ram_per_worker)} MB per worker) = {by_ram})"
        )
    total = count * max_ram_per_worker
    ram_why = (
        f"{count} worker{'s' if count != 1 else ''} x {_mb(max_ram_per_worker)} MB = "
        f"{_mb(total)} MB, {100 * total / available:.0f}% of the {shown} MB available"
        if available > 0
        else "no RAM reported available"
    )
    return PoolSize(count, max_ram_per_worker, {"nb_workers": why, "max_ram_per_worker": ram_why})


def resolve_pool_config(config: _T, facts: MachineFacts | None = None) -> tuple[_T, dict[str, str]]:
    """``config`` with an int ``nb_workers`` sized for the machine, and the reasons.

    A config without an ``nb_workers`` field (``sequential``) comes back unchanged, with no
    reasons; the machine is read (:func:`read_machine_facts`) only when ``facts`` is None and the
    config has a pool to size."""
    if not dataclasses.is_dataclass(config) or "nb_workers" not in {
        spec.name for spec in dataclasses.fields(config)
    }:
        return config, {}
    values: Any = config
    if facts is None:
        facts = read_machine_facts()
    pool = size_pool(facts, values.nb_workers, values.max_ram_per_worker)
    resolved: _T = dataclasses.replace(values, nb_workers=pool.nb_workers)
    return resolved, dict(pool.reasons)


def describe_facts(facts: MachineFacts) -> str:
    """One line: CPUs, affinity, cgroup quota, SLURM allocation and available RAM."""
    affinity = "unknown" if facts.affinity_cpus is None else str(facts.affinity_cpus)
    quota = "none" if facts.cgroup_cpu_quota is None else f"{facts.cgroup_cpu_quota:g} CPUs"
    slurm = "none" if facts.slurm_cpus is None else f"{facts.slurm_cpus} CPUs"
    return (
        f"{facts.cpu_count} CPUs, affinity {affinity}, cgroup quota {quota}, "
        f"SLURM allocation {slurm}, {_mb(math.floor(facts.available_ram_mb))} MB RAM available"
    )


def _mb(value: float) -> str:
    """MB with thousands separators and at most one decimal (none for a whole number)."""
    text = f"{value:,.1f}"
    return text[:-2] if text.endswith(".0") else text
