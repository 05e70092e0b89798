"""The public API is pinned: adding, removing or renaming a name is a deliberate change here."""

from __future__ import annotations

import subprocess
import sys

import orchestrix as ox

PUBLIC = {
    "ArraySink", "AutoConfig", "CanaryError", "Config", "ConfigError", "ConfigWarning",
    "Delayed", "DiskFullError", "LargeArgumentWarning", "LocalDaskConfig",
    "MultiprocessingConfig", "NameStats", "NoWorkerError", "Orchestrator",
    "OrchestratorInTaskError", "OrchestrixError", "PbsDaskConfig", "ProfilingConfig",
    "RemoteTraceback", "RunSummary", "SequentialConfig", "Shared", "SlurmDaskConfig",
    "StallError", "TaskError", "TaskEvent", "TaskFunction", "TaskTimeoutError", "Tile",
    "UpstreamTaskError", "WorkerCrashedError", "WorkerMemoryError", "__version__",
    "resolve_config", "task", "tiles", "tokenize",
}  # fmt: skip


def test_public_names_are_pinned():
    assert set(ox.__all__) == PUBLIC
    assert len(ox.__all__) == len(PUBLIC), "a name is listed twice"


def test_every_public_name_exists():
    missing = [name for name in ox.__all__ if not hasattr(ox, name)]
    assert missing == []


def test_import_starts_no_heavy_package_and_no_backend():
    code = (
        "import sys, orchestrix\n"
        "heavy = [m for m in sys.modules\n"
        "         if m.split('.')[0] in ('dask', 'distributed', 'memray', 'cars')]\n"
        "backends = [m for m in sys.modules if m.startswith('orchestrix.backends.')]\n"
        "print(heavy, [m for m in backends if m != 'orchestrix.backends.base'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
