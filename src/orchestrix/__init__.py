"""orchestrix: write a chunked pipeline once as a graph of small tasks, run it in any mode.

``import orchestrix`` is light: backends (and dask) are imported only when their mode is used.
"""

from __future__ import annotations

import logging

from .callbacks import TaskEvent
from .config import (
    AutoConfig,
    Config,
    LocalDaskConfig,
    MultiprocessingConfig,
    PbsDaskConfig,
    ProfilingConfig,
    SequentialConfig,
    SlurmDaskConfig,
)
from .errors import (
    CanaryError,
    ConfigError,
    DiskFullError,
    NoWorkerError,
    OrchestrixError,
    RemoteTraceback,
    StallError,
    TaskError,
    TaskTimeoutError,
    UpstreamTaskError,
    WorkerCrashedError,
    WorkerMemoryError,
)
from .graph import Delayed, TaskFunction, task
from .orchestrator import Orchestrator
from .tiles import ArraySink, Tile, tiles
from .tokenize import tokenize

__version__ = "0.1.0"

__all__ = [
    "ArraySink",
    "AutoConfig",
    "CanaryError",
    "Config",
    "ConfigError",
    "Delayed",
    "DiskFullError",
    "LocalDaskConfig",
    "MultiprocessingConfig",
    "NoWorkerError",
    "Orchestrator",
    "OrchestrixError",
    "PbsDaskConfig",
    "ProfilingConfig",
    "RemoteTraceback",
    "SequentialConfig",
    "SlurmDaskConfig",
    "StallError",
    "TaskError",
    "TaskTimeoutError",
    "Tile",
    "TaskEvent",
    "TaskFunction",
    "UpstreamTaskError",
    "WorkerCrashedError",
    "WorkerMemoryError",
    "task",
    "tiles",
    "tokenize",
    "__version__",
]

# A library's logger stays silent unless the application configures logging.
logging.getLogger("orchestrix").addHandler(logging.NullHandler())
