"""Backends, one module each, imported only when their mode is used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import Backend, Recorder

__all__ = ["AVAILABLE", "Backend", "Recorder", "check_built", "create_backend"]


def _sequential() -> type[Backend]:
    from .sequential import SequentialBackend

    return SequentialBackend


def _pool() -> type[Backend]:
    from .pool.manager import MultiprocessingBackend

    return MultiprocessingBackend


def _local_dask() -> type[Backend]:
    from .dask.backend import DaskBackend

    return DaskBackend


def _jobqueue() -> type[Backend]:
    from .dask.jobqueue import JobqueueBackend

    return JobqueueBackend


#: mode -> the backend class that runs it, imported when called (real imports, not module paths
#: in strings: moving a module is caught by the linters); modes absent here are not built yet
AVAILABLE: dict[str, Callable[[], type[Backend]]] = {
    "sequential": _sequential,
    "multiprocessing": _pool,
    "auto": _pool,
    "local_dask": _local_dask,
    "slurm_dask": _jobqueue,
    "pbs_dask": _jobqueue,
}


def create_backend(config: Any, monitor: Recorder, **extras: Any) -> Backend:
    """The backend for ``config.mode``, imported on demand (dask stays unimported otherwise),
    recording its units in ``monitor``. ``extras`` are objects that are not configuration, e.g.
    an existing dask ``client``."""
    backend_class = create_backend_class(config)
    unknown = [name for name in extras if name not in backend_class.takes]
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)} only applies to the dask modes, not {config.mode!r}"
        )
    backend: Backend = backend_class(config, monitor, **extras)
    return backend


def create_backend_class(config: Any) -> type[Backend]:
    """The backend class of ``config.mode``; ConfigError if that mode is not built yet."""
    check_built(config.mode)
    return AVAILABLE[config.mode]()


def check_built(mode: str) -> None:
    """ConfigError if ``mode``'s backend is not built yet; imports nothing."""
    if mode not in AVAILABLE:
        built = ", ".join(sorted(AVAILABLE))
        raise ConfigError(
            f"mode {mode!r} is valid but its backend is not built in this version of "
            f"orchestrix yet; available modes: {built}"
        )
