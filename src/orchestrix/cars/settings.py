"""The CARS side of the configuration: CARS's ``orchestrator`` section for the orchestrix mode.

Pure: it imports no CARS. A CARS user writes ``{"mode": "orchestrix", "backend": "local_dask",
...}``: ``backend`` picks orchestrix's mode (multiprocessing when absent) and every other key is
that mode's orchestrix key, or CARS's own key for that mode (what does not apply warns and is
ignored, as for any orchestrix configuration).

CARS reads the checked section back (``get_conf``) and feeds it to the next cluster it builds,
so :func:`check_cars_conf` must accept its own output. CARS also reads some keys of the section
itself, whatever the mode: ``max_ram_per_worker`` sizes its tiles, ``nb_workers`` and
``task_timeout`` are read by its orchestrator; they are kept in the section for CARS even where
orchestrix's mode has no use for them (sequential).
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ..config import CONFIG_CLASSES, Config
from ..errors import ConfigError
from ..resolve import resolve_config

__all__ = ["BACKENDS", "MODE", "check_cars_conf", "orchestrix_config"]

#: the CARS mode this plugin registers
MODE = "orchestrix"
#: orchestrix's modes a CARS run can use, the first is the default
BACKENDS = ("multiprocessing", "sequential", "auto", "local_dask", "slurm_dask", "pbs_dask")
#: keys CARS reads from the section for itself in every mode, with CARS's defaults
CARS_READS = {"max_ram_per_worker": 2000, "nb_workers": 1, "task_timeout": 600}
_STAND_IN_OUT_DIR = os.path.join(tempfile.gettempdir(), "orchestrix-cars-check")
#: keys the plugin owns: not orchestrix keys
_OWN = ("mode", "backend")


def check_cars_conf(conf: Mapping[str, Any] | None) -> dict[str, Any]:
    """CARS's ``check_conf``: the section validated, with orchestrix's defaults and sizing.

    The result is plain data (CARS writes it to its ``used_conf``) and valid input again."""
    given = dict(conf or {})
    # Each cluster writes in its own CARS log directory, unknown here: check the keys that
    # need an out_dir (profiling, resume) against a stand-in, never created
    config = orchestrix_config(given, out_dir=given.get("out_dir") or _STAND_IN_OUT_DIR)
    checked: dict[str, Any] = {"mode": MODE, "backend": config.mode}
    checked.update((key, value) for key, value in config.to_dict().items() if key != "mode")
    if not given.get("out_dir"):
        checked.pop("out_dir", None)  # decided per cluster, from CARS's log directory
    for key, default in CARS_READS.items():
        checked.setdefault(key, given.get(key, default))
    if "profiling" in given and not given["profiling"]:
        checked["profiling"] = {}  # CARS's own way of saying "no profiling"
    return checked


def orchestrix_config(conf: Mapping[str, Any] | None, **overrides: Any) -> Config:
    """The frozen, sized orchestrix configuration of a CARS section (nothing is started)."""
    given = dict(conf or {})
    mode = given.pop("mode", MODE)
    if mode != MODE:
        raise ConfigError(f"key 'mode' of the orchestrix plugin expects {MODE!r}, got {mode!r}")
    backend = given.pop("backend", BACKENDS[0])
    if not isinstance(backend, str) or backend not in BACKENDS:
        matches = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f" (did you mean {matches[0]!r}?)" if matches else ""
        raise ConfigError(
            f"key 'backend' of CARS's orchestrix mode expects one of {', '.join(BACKENDS)}, "
            f"got {backend!r}{hint}"
        )
    if given.get("profiling") == {}:
        given.pop("profiling")  # CARS writes an empty dict for its default
    return resolve_config(_applicable(given, backend), mode=backend, **overrides)


def _applicable(given: dict[str, Any], backend: str) -> dict[str, Any]:
    """``given`` without the keys CARS keeps for itself where orchestrix's mode has no use for
    them: CARS reads them (to size its tiles), so they are not a mistake to warn about."""
    valid = CONFIG_CLASSES[backend].key_names()
    return {
        key: value
        for key, value in given.items()
        if key in valid or (key not in CARS_READS and key not in _OWN)
    }
