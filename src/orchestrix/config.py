"""Validated, frozen configuration: one dataclass per mode.

Keys and defaults follow CARS's orchestrator table; orchestrix adds its own (``out_dir``,
``retries``). An unknown key, a wrong type or a value out of range raises :class:`ConfigError` in
one line that names the key, what was expected and what was given, and suggests the closest valid
key. A CARS configuration is accepted as it is (:mod:`orchestrix.config_compat`): ``mode: "mp"`` is
``multiprocessing``, and a key that has no effect in the mode (a key of another mode, a CARS key
orchestrix has no use for) is dropped with a :class:`~orchestrix.errors.ConfigWarning`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .checks import (
    _is_bool,
    _is_int,
    _is_path,
    _is_str,
    _module_names,
    _one_of,
    _optional,
    _positive_int,
    _positive_number_up_to,
)
from .config_compat import applicable_keys, canonical_mode, did_you_mean
from .errors import ConfigError

__all__ = [
    "AutoConfig",
    "Config",
    "DEFAULT_MODE",
    "LocalDaskConfig",
    "MODES",
    "MultiprocessingConfig",
    "PbsDaskConfig",
    "ProfilingConfig",
    "SequentialConfig",
    "SlurmDaskConfig",
    "load_config_file",
    "parse_config",
]

MODES = ("sequential", "multiprocessing", "auto", "local_dask", "pbs_dask", "slurm_dask")
#: the mode used when none is given
DEFAULT_MODE = "auto"
PROFILING_MODES = ("timing", "cprofile", "memray")
MP_MODES = ("forkserver", "fork", "spawn")
LIMITS = ("kill", "warn")
#: the largest memory limit accepted (MB): 1 EiB, whose byte count still fits in 64 bits
MAX_MB = 2**40
#: the longest timeout accepted (s): longer ones overflow the waits of ``threading``
MAX_SECONDS = threading.TIMEOUT_MAX


def _key(
    default: Any, expected: str, check: Callable[[Any], bool], doc: str, path: bool = False
) -> Any:
    """A config field: its default, a check of its value, and how to describe a valid value.

    A callable default is a factory (each config gets its own value). ``path``: a directory,
    made absolute when the config is built (see :func:`_resolve_paths`)."""
    metadata = {"expected": expected, "check": check, "doc": doc, "path": path}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _path_key(doc: str) -> Any:
    return _key(None, "a directory path (str) or None", _optional(_is_path), doc, path=True)


def _resolve_paths(config: Any) -> None:
    """Make the path keys absolute, once: a task that changes the working directory (in the
    caller's process in sequential mode) must not move where results and logs go."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if not spec.metadata.get("path") or value is None:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if _is_path(value):
            object.__setattr__(config, spec.name, os.path.abspath(value))


def _shown(value: Any) -> str:
    """A value as an error shows it: short, on one line."""
    return " ".join(_REPR.repr(value).split())


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _check_fields(config: Any, prefix: str, mode: str | None = None) -> None:
    where = f" for mode {mode!r}" if mode else ""
    for spec in dataclasses.fields(config):
        check = spec.metadata.get("check")
        value = getattr(config, spec.name)
        if check is not None and not check(value):
            raise ConfigError(
                f"key '{prefix}{spec.name}'{where} expects {spec.metadata['expected']}, "
                f"got {_shown(value)} ({type(value).__name__})"
            )


def _nb_workers_key(default: int | str) -> Any:
    check = lambda v: _positive_int(v) or _one_of("auto")(v)  # noqa: E731
    return _key(default, "a positive int or 'auto'", check, "worker count")


def _seconds_key(default: float | None, doc: str) -> Any:
    check = _optional(_positive_number_up_to(MAX_SECONDS))
    return _key(default, "a finite positive number of seconds or None", check, doc)


_WALLTIME = re.compile(r"^\d+:[0-5]\d:[0-5]\d$")


@dataclass(frozen=True)
class ProfilingConfig:
    """The ``profiling`` key: ``{"mode": "timing"|"cprofile"|"memray", "loop_testing": bool}``."""

    mode: str = _key(
        "timing",
        f"one of {', '.join(PROFILING_MODES)}",
        _one_of(*PROFILING_MODES),
        "what to record",
    )
    loop_testing: bool = _key(
        False, "a bool", _is_bool, "run each task several times, report leaks"
    )

    def __post_init__(self) -> None:
        _check_fields(self, "profiling.")


def _profiling(value: Any) -> bool:
    return isinstance(value, ProfilingConfig)


@dataclass(frozen=True)
class Config:
    """Keys common to every mode."""

    mode: str = DEFAULT_MODE
    out_dir: str | None = _path_key("where logs and reports go")
    factorize_tasks: bool = _key(
        True, "a bool", _is_bool, "fuse sequential chains of tasks into one unit of work"
    )
    profiling: ProfilingConfig = _key(  # noqa: RUF009 - _key returns a field()
        ProfilingConfig,
        "a dict with keys 'mode' and 'loop_testing'",
        _profiling,
        "per-task profiling",
    )
    progress: bool | None = _key(
        None,
        "a bool or None",
        _optional(_is_bool),
        "progress bar (None: only when the output is a terminal or a notebook)",
    )
    canary: int = _key(
        0,
        "an int >= 0",
        lambda value: _is_int(value) and value >= 0,
        "run the first N targets' subgraphs first; stop with CanaryError if one fails",
    )
    resume: bool = _key(
        False,
        "a bool",
        _is_bool,
        "keep final results in out_dir and load them instead of recomputing on a rerun",
    )
    keep_journal: bool = _key(
        False,
        "a bool",
        _is_bool,
        "keep the tasks of earlier runs in out_dir's journal (several orchestrators of one "
        "pipeline in one out_dir: status shows them all); False: a new run starts a new journal",
    )

    MODE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode != self.MODE:
            raise ConfigError(
                f"{type(self).__name__} is for mode {self.MODE!r}, got {_shown(self.mode)}"
            )
        _resolve_paths(self)
        if isinstance(self.profiling, Mapping):
            object.__setattr__(self, "profiling", _build_profiling(self.profiling))
        _check_fields(self, "", self.mode)
        if self.profiling.mode != "timing" and self.out_dir is None:
            raise ConfigError(
                f"key 'profiling' asks for {self.profiling.mode!r} profiling, which writes files: "
                "set 'out_dir' too"
            )
        if self.resume and self.out_dir is None:
            raise ConfigError(
                "key 'resume' keeps results in 'out_dir' to load them on a rerun: set 'out_dir' too"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-serialisable data (the input format)."""
        return dataclasses.asdict(self)

    @classmethod
    def key_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class SequentialConfig(Config):
    """``sequential``: every task runs in the caller's process, one after the other."""

    mode: str = "sequential"
    MODE: ClassVar[str] = "sequential"


@dataclass(frozen=True)
class _WorkerPoolConfig(Config):
    """Keys of every mode that runs tasks in worker processes."""

    nb_workers: int | str = _nb_workers_key(2)
    max_ram_per_worker: int | float = _key(
        2000,
        f"a finite positive number of MB (at most {MAX_MB})",
        _positive_number_up_to(MAX_MB),
        "memory limit of a worker (MB)",
    )
    task_timeout: int | float | None = _seconds_key(
        600, "stall watchdog: restart when no task finished for this long"
    )
    per_job_timeout: int | float | None = _seconds_key(600, "a task running longer is stopped")
    retries: int = _key(
        2,
        "an int >= 0",
        lambda v: _is_int(v) and v >= 0,
        "re-runs of a task whose worker crashed or timed out",
    )
    dump_to_disk: bool = _key(
        True, "a bool", _is_bool, "pass numpy arrays through files instead of pipes"
    )
    preload: tuple[str, ...] = _key(
        (),
        "a list of module names (dotted Python identifiers)",
        _module_names,
        "modules every worker imports before its first task (replacement workers too)",
    )
    limits: str = _key(
        "kill",
        f"one of {', '.join(LIMITS)}",
        _one_of(*LIMITS),
        "a task over per_job_timeout or max_ram_per_worker: 'kill' stops it, 'warn' logs a "
        "warning and lets it run (as CARS did)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.preload, list):
            object.__setattr__(self, "preload", tuple(self.preload))


@dataclass(frozen=True)
class MultiprocessingConfig(_WorkerPoolConfig):
    """``multiprocessing``: a pool of local worker processes."""

    mode: str = "multiprocessing"
    nb_workers: int | str = _nb_workers_key("auto")
    mp_mode: str = _key(
        "forkserver", f"one of {', '.join(MP_MODES)}", _one_of(*MP_MODES), "how workers start"
    )
    max_tasks_per_worker: int | None = _key(
        None,
        "a positive int or None",
        _optional(_positive_int),
        "a worker is replaced after this many tasks (None: never)",
    )
    dump_dir: str | None = _path_key(
        "where result arrays are dumped (None: /dev/shm if it has room, else out_dir or tmp)"
    )
    MODE: ClassVar[str] = "multiprocessing"


@dataclass(frozen=True)
class AutoConfig(MultiprocessingConfig):
    """``auto``: multiprocessing with the pool sized from the machine's CPUs and free memory."""

    mode: str = "auto"
    MODE: ClassVar[str] = "auto"


@dataclass(frozen=True)
class _DaskConfig(_WorkerPoolConfig):
    use_memory_logger: bool = _key(False, "a bool", _is_bool, "sample worker memory to out_dir")
    activate_dashboard: bool = _key(False, "a bool", _is_bool, "serve dask's dashboard")


@dataclass(frozen=True)
class LocalDaskConfig(_DaskConfig):
    """``local_dask``: a dask LocalCluster on this machine."""

    mode: str = "local_dask"
    threads_per_worker: int = _key(
        1, "a positive int", _positive_int, "threads per worker (more for code that frees the GIL)"
    )
    scheduler_address: str | None = _key(
        None,
        "a scheduler address (str) or None",
        _optional(_is_str),
        "use this running dask scheduler instead of starting a cluster",
    )
    MODE: ClassVar[str] = "local_dask"


@dataclass(frozen=True)
class _JobqueueConfig(_DaskConfig):
    walltime: str = _key(
        "00:59:00",
        "a duration 'HH:MM:SS'",
        lambda v: isinstance(v, str) and bool(_WALLTIME.match(v)),
        "walltime of one worker job",
    )
    python: str | None = _key(
        None, "a path to a Python interpreter or None", _optional(_is_str), "worker interpreter"
    )
    account: str | None = _key(
        None, "an account name (str) or None", _optional(_is_str), "batch account to charge"
    )
    qos: str | None = _key(
        None, "a QoS name (str) or None", _optional(_is_str), "batch quality of service"
    )
    queue: str | None = _key(
        None, "a queue or partition name (str) or None", _optional(_is_str), "batch queue"
    )
    cores: int = _key(1, "a positive int", _positive_int, "cores per worker job")
    job_extra: tuple[str, ...] = _key(
        (),
        "a list of strings",
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
        "extra scheduler directives for the job script, e.g. ['--constraint=skylake']",
    )
    interface: str | None = _key(
        None,
        "a network interface name (str) or None",
        _optional(_is_str),
        "interface the scheduler and workers use (None: the hostname's address)",
    )
    security: bool = _key(
        True, "a bool", _is_bool, "TLS with temporary certificates between scheduler and workers"
    )
    worker_start_timeout: int | float | None = _seconds_key(
        600,
        "tasks fail with NoWorkerError when no worker job has joined this long after the start "
        "(None: wait for ever, e.g. on a queue known to be busy)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.job_extra, list):
            object.__setattr__(self, "job_extra", tuple(self.job_extra))


@dataclass(frozen=True)
class PbsDaskConfig(_JobqueueConfig):
    """``pbs_dask``: dask workers started as PBS jobs by dask-jobqueue."""

    mode: str = "pbs_dask"
    MODE: ClassVar[str] = "pbs_dask"


@dataclass(frozen=True)
class SlurmDaskConfig(_JobqueueConfig):
    """``slurm_dask``: dask workers started as SLURM jobs by dask-jobqueue."""

    mode: str = "slurm_dask"
    MODE: ClassVar[str] = "slurm_dask"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.account is None:
            raise ConfigError(
                "key 'account' is required for mode 'slurm_dask': expected the SLURM account "
                "to charge, got nothing"
            )


CONFIG_CLASSES: dict[str, type[Config]] = {
    "sequential": SequentialConfig,
    "multiprocessing": MultiprocessingConfig,
    "auto": AutoConfig,
    "local_dask": LocalDaskConfig,
    "pbs_dask": PbsDaskConfig,
    "slurm_dask": SlurmDaskConfig,
}


def parse_config(options: Mapping[str, Any] | Config | None = None, **overrides: Any) -> Config:
    """Validate a CARS-style dict and/or keyword options into the frozen config of their mode."""
    if isinstance(options, Config):
        options = options.to_dict()
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(
            "the configuration expects a mapping of keys (a dict) or a Config, "
            f"got {_shown(options)} ({type(options).__name__})"
        )
    merged = {**(options or {}), **overrides}
    for key in merged:
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {_shown(key)}")
    mode = merged["mode"] = canonical_mode(merged.get("mode", DEFAULT_MODE))
    if not isinstance(mode, str) or mode not in CONFIG_CLASSES:
        hint = did_you_mean(mode, MODES) if isinstance(mode, str) else ""
        raise ConfigError(
            f"key 'mode' expects one of {', '.join(MODES)}, "
            f"got {_shown(mode)} ({type(mode).__name__}){hint}"
        )
    keys = {name: config_class.key_names() for name, config_class in CONFIG_CLASSES.items()}
    return CONFIG_CLASSES[mode](**applicable_keys(merged, mode, keys))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON or YAML config file; a CARS file's ``orchestrator`` section is accepted too."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    if path.endswith((".yaml", ".yml")):
        import yaml  # only needed for YAML files

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {_shown(str(exc))}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    if "orchestrator" in data and isinstance(data["orchestrator"], dict):
        data = data["orchestrator"]
    return data


def _build_profiling(value: Mapping[str, Any]) -> ProfilingConfig:
    valid = tuple(ProfilingConfig.__dataclass_fields__)
    for key in value:
        if key not in valid:
            hint = did_you_mean(key, valid)
            raise ConfigError(
                f"unknown key 'profiling.{key}'{hint}; valid keys of profiling: {', '.join(valid)}"
            )
    return ProfilingConfig(**value)
