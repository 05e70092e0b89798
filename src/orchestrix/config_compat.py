"""CARS's orchestrator configurations accepted as they are, and the messages about keys.

``mode: "mp"`` (CARS's deprecated name) is the ``multiprocessing`` mode. A key that has no effect
in the chosen mode, because it is a key of another orchestrix mode (``walltime`` in
``local_dask``) or a CARS key orchestrix has no use for (``config_name``), is dropped with one
:class:`ConfigWarning`, whatever its value. A key that no mode knows is a typo: a
:class:`ConfigError` naming the closest valid key. This module is the one place that builds these
messages (see docs/migrating-from-cars.md).
"""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, ConfigWarning

__all__ = [
    "CARS_ONLY_KEYS",
    "MODE_ALIASES",
    "applicable_keys",
    "canonical_mode",
    "did_you_mean",
    "unknown_key_message",
]

#: another name of a mode -> the mode (CARS deprecated "mp" for "multiprocessing")
MODE_ALIASES = {"mp": "multiprocessing"}

#: keys of CARS's orchestrator that orchestrix has no use for -> why they have no effect
CARS_ONLY_KEYS = {
    "config_name": "CARS's name for the dask configuration it saves; orchestrix saves none",
}


def canonical_mode(mode: Any) -> Any:
    """The mode an alias names (``"mp"`` -> ``"multiprocessing"``); any other value as it is."""
    return MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode


def applicable_keys(
    options: Mapping[str, Any], mode: str, keys_by_mode: Mapping[str, tuple[str, ...]]
) -> dict[str, Any]:
    """``options`` less the keys that have no effect in ``mode``, each warned of once.

    ``keys_by_mode``: the valid keys of each mode. A key known to no mode raises
    :class:`ConfigError` before anything is warned of."""
    valid = keys_by_mode[mode]
    ignored: list[str] = []
    for key in options:
        if key in valid:
            continue
        reason = _no_effect(key, mode, keys_by_mode)
        if reason is None:
            raise ConfigError(unknown_key_message(key, mode, valid))
        ignored.append(reason)
    for reason in ignored:
        warnings.warn(f"{reason}; ignored", ConfigWarning, stacklevel=_caller_level())
    return {key: value for key, value in options.items() if key in valid}


def _no_effect(key: str, mode: str, keys_by_mode: Mapping[str, tuple[str, ...]]) -> str | None:
    """Why ``key`` has no effect in ``mode``; None for a key that no mode knows."""
    others = [other for other, keys in keys_by_mode.items() if key in keys]
    if others:
        return f"key {key!r} does not apply to mode {mode!r} (it is a key of {', '.join(others)})"
    if key in CARS_ONLY_KEYS:
        return f"key {key!r} has no effect in mode {mode!r} ({CARS_ONLY_KEYS[key]})"
    return None


def unknown_key_message(key: str, mode: str, valid: tuple[str, ...]) -> str:
    """The error of a key that no mode knows: the closest valid key and all of them."""
    return (
        f"unknown key {key!r} for mode {mode!r}{did_you_mean(key, valid)}; "
        f"valid keys: {', '.join(sorted(valid))}"
    )


def did_you_mean(word: Any, choices: Any) -> str:
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _caller_level() -> int:
    """The ``stacklevel`` that names the first caller outside orchestrix, for a warning made by
    the function that calls this one: the user's ``Orchestrator(...)`` or ``parse_config``."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == (
        "orchestrix"
    ):
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]
    return level
