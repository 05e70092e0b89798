"""Checks of configuration values, one predicate per kind of value.

Private to :mod:`.config`, which builds its keys from them: they keep the private names they
had there."""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and infinity make no limit or count."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _positive_number_up_to(most: float) -> Callable[[Any], bool]:
    return lambda value: _is_number(value) and 0 < value <= most


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_path(value: Any) -> bool:
    return _is_str(value) and "\0" not in value  # the OS refuses a NUL byte in a path


def _module_names(value: Any) -> bool:
    """A list of dotted module names: ``["numpy", "cars.core.inputs"]``."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(name, str)
        and all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))
        for name in value
    )


def _one_of(*choices: str) -> Callable[[Any], bool]:
    # The type first: ``in`` would hash an unhashable value or compare an array elementwise.
    return lambda value: isinstance(value, str) and value in choices
