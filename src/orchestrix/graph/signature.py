"""Checking a call's arguments against the function's signature when the call is made.

A task called with arguments that do not fit its function (``load(1, 2)`` for ``def load(i)``)
would fail only when a worker runs it, after the graph is built and maybe hours into a run. The
arguments are bound here instead, when the node is made, so the error names the task at the line
that made the mistake. The signature is read once per function; the common call (positional
arguments only, as many as the function takes) is accepted by comparing two counts, without
``Signature.bind``, which costs a few microseconds a call.

The signature checked is that of the callable that will run, not of what it wraps: a decorator's
wrapper may take other arguments than the function it wraps (``inspect.signature`` is asked not
to follow ``__wrapped__``), and refusing a valid call would be worse than a late error. A
callable whose signature cannot be read (some builtins) is not checked.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable
from operator import is_
from typing import Any

__all__ = ["SignatureCheck"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class SignatureCheck:
    """Binds calls of ``func`` (named ``name`` in errors) against its signature."""

    __slots__ = ("_definition", "_fewest", "_func", "_most", "_name", "_signature")

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self._func, self._name = func, name
        self._read()

    def _read(self) -> None:
        func = self._func
        self._definition = _definition(func)
        try:
            signature: inspect.Signature | None = inspect.signature(func, follow_wrapped=False)
        except (TypeError, ValueError):  # no signature to read: the call is not checked
            signature = None
        self._signature = signature
        # The positional counts a call without keywords may have, when it needs no keyword.
        self._fewest, self._most = 0.0, math.inf
        if signature is not None:
            self._fewest, self._most = _positional_range(signature)

    def __reduce__(self) -> tuple[Any, ...]:
        # Read again where it lands: a signature's defaults need not pickle.
        return (SignatureCheck, (self._func, self._name))

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError, naming the task, if ``func(*args, **kwargs)`` cannot be bound."""
        func, known = self._func, self._definition
        if type(func) is types.FunctionType:  # the common case, without building a tuple
            rebound = (
                func.__code__ is not known[0]
                or func.__defaults__ is not known[1]
                or func.__kwdefaults__ is not known[2]
            )
        else:
            rebound = not all(map(is_, _definition(func), known))
        if rebound:
            self._read()  # rebound since: ``f.__defaults__ = ...`` changes what a call may omit
        if self._signature is None or (not kwargs and self._fewest <= len(args) <= self._most):
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"task {self._name!r} called with arguments that do not fit its signature "
                f"{self._name}{self._signature}: {exc}"
            ) from None


def _definition(func: Any) -> tuple[Any, Any, Any]:
    """What a function's signature is read from, compared by identity to see it rebound."""
    while isinstance(func, functools.partial):
        func = func.func
    func = getattr(func, "__func__", func)  # a bound method: its function
    return (
        getattr(func, "__code__", None),
        getattr(func, "__defaults__", None),
        getattr(func, "__kwdefaults__", None),
    )


def _positional_range(signature: inspect.Signature) -> tuple[float, float]:
    """(fewest, most) positional arguments a call with no keywords may pass; (1, 0), which no
    count fits, when a keyword-only parameter has no default (such a call always fails)."""
    fewest, most = 0.0, 0.0
    for parameter in signature.parameters.values():
        if parameter.kind in _POSITIONAL:
            most += 1
            if parameter.default is inspect.Parameter.empty:
                fewest = most
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            most = math.inf
        elif (
            parameter.kind is inspect.Parameter.KEYWORD_ONLY
            and parameter.default is inspect.Parameter.empty
        ):
            return (1.0, 0.0)
    return (fewest, most)
