"""The configuration an :class:`~orchestrix.Orchestrator` runs with, found without starting one.

``Orchestrator(config, **options)`` and :func:`resolve_config` take the same path: validate
(:func:`~orchestrix.config.parse_config`), refuse a mode whose backend is not built, size the
pool for this machine (:func:`~orchestrix.sizing.resolve_pool_config`). Nothing is started and no
backend is imported (dask stays unimported).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backends import check_built
from .config import Config, parse_config
from .sizing import MachineFacts, resolve_pool_config

__all__ = ["resolve_config", "resolve_with_reasons"]


def resolve_config(config: Mapping[str, Any] | Config | None = None, /, **options: Any) -> Config:
    """The frozen config ``Orchestrator(config, **options)`` would run with, and check it.

    ``config`` is what an orchestrator takes (a dict in CARS's format, a :class:`Config`, or
    None) and keyword ``options`` override it. ``nb_workers="auto"`` comes back as the int an
    orchestrator would start on this machine (``python -m orchestrix plan`` shows why). Raises
    :class:`~orchestrix.ConfigError` where the orchestrator would, and warns
    :class:`~orchestrix.ConfigWarning` of the keys it would ignore. Starts nothing: no worker,
    process or cluster, and imports no backend."""
    return resolve_with_reasons(config, options)[0]


def resolve_with_reasons(
    config: Mapping[str, Any] | Config | None,
    options: Mapping[str, Any],
    facts: MachineFacts | None = None,
) -> tuple[Config, dict[str, str]]:
    """:func:`resolve_config`, with the one-line reason of each sized key; ``facts`` (default:
    this machine's) are what the pool is sized for."""
    parsed = parse_config(config, **options)
    check_built(parsed.mode)  # an unbuilt mode is refused before the machine is sized
    return resolve_pool_config(parsed, facts)
