"""Backends, one module each, imported only when their mode is used."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import Backend

__all__ = ["Backend", "AVAILABLE", "create_backend"]

#: mode -> "module:class" of the backend that runs it; modes absent here are not built yet
AVAILABLE: dict[str, str] = {
    "sequential": "orchestrix.backends.sequential:SequentialBackend",
    "multiprocessing": "orchestrix.backends.multiprocessing:MultiprocessingBackend",
    "auto": "orchestrix.backends.multiprocessing:MultiprocessingBackend",
    "local_dask": "orchestrix.backends.local_dask:DaskBackend",
    "slurm_dask": "orchestrix.backends.jobqueue:JobqueueBackend",
    "pbs_dask": "orchestrix.backends.jobqueue:JobqueueBackend",
}


def create_backend(config: Any, **extras: Any) -> Backend:
    """The backend for ``config.mode``, imported on demand (dask stays unimported otherwise).
    ``extras`` are objects that are not configuration, e.g. an existing dask ``client``."""
    backend_class = create_backend_class(config)
    if extras and not getattr(backend_class, "runs_graphs", False):
        raise ConfigError(
            f"{', '.join(extras)} only applies to the dask modes, not {config.mode!r}"
        )
    backend: Backend = backend_class(config, **extras)
    return backend


def create_backend_class(config: Any) -> type[Backend]:
    """The backend class of ``config.mode``; ConfigError if that mode is not built yet."""
    target = AVAILABLE.get(config.mode)
    if target is None:
        built = ", ".join(sorted(AVAILABLE))
        raise ConfigError(
            f"mode {config.mode!r} is valid but its backend is not built in this version of "
            f"orchestrix yet; available modes: {built}"
        )
    module_name, class_name = target.split(":")
    backend_class: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return backend_class
