"""orchestrix: write a chunked pipeline once as a graph of small tasks, run it in any mode.

``import orchestrix`` is light: backends (and dask) are imported only when their mode is used.
"""

# The layers, each importing only those below it (docs/architecture.md draws them):
#   orchestrator.py    the facade: Orchestrator (an Executor)
#   resolve.py         resolve_config: the config an Orchestrator runs with, starting nothing
#   session.py         what an open orchestrator holds: monitor, backend, engine, journal
#   engine/            the caller side of a run: ready units out, outcomes in; futures; store
#   backends/          how units run: sequential, pool/ (multiprocessing, auto), dask/; they
#                      are handed a Recorder and import none of the three below
#   monitoring/ journal/ reports/   what is recorded of a run, durably, and shown to people
#   worker/            what runs inside any worker: execute a unit, observe it, move its data
#   graph/             pure: tasks, keys, fusion, tiles
#   errors failures records config config_compat sizing atomic runcontext   pure: the errors
#                      and the one place that builds them, the records that cross boundaries,
#                      configs (and CARS's accepted as they are)

from __future__ import annotations

import logging

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
    ConfigWarning,
    DiskFullError,
    LargeArgumentWarning,
    NoWorkerError,
    OrchestratorInTaskError,
    OrchestrixError,
    RemoteTraceback,
    StallError,
    TaskError,
    TaskTimeoutError,
    UpstreamTaskError,
    WorkerCrashedError,
    WorkerMemoryError,
)
from .graph.shared import Shared
from .graph.tasks import Delayed, TaskFunction, task
from .graph.tiles import ArraySink, Tile, tiles
from .graph.tokenize import tokenize
from .monitoring.callbacks import TaskEvent
from .monitoring.monitor import NameStats, RunSummary
from .orchestrator import Orchestrator
from .resolve import resolve_config

__version__ = "0.1.0"

__all__ = [
    "ArraySink",
    "AutoConfig",
    "CanaryError",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "Delayed",
    "DiskFullError",
    "LargeArgumentWarning",
    "LocalDaskConfig",
    "MultiprocessingConfig",
    "NameStats",
    "NoWorkerError",
    "Orchestrator",
    "OrchestratorInTaskError",
    "OrchestrixError",
    "PbsDaskConfig",
    "ProfilingConfig",
    "RemoteTraceback",
    "RunSummary",
    "SequentialConfig",
    "Shared",
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
    "resolve_config",
    "task",
    "tiles",
    "tokenize",
    "__version__",
]

# A library's logger stays silent unless the application configures logging.
logging.getLogger("orchestrix").addHandler(logging.NullHandler())
