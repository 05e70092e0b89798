"""Refuse to start a LocalCluster from a script's top level outside ``if __name__ == "__main__":``.

distributed starts each worker with multiprocessing's spawn, which re-runs the caller's script in
the new process; a script without the guard then starts orchestrix again there, and the run ends
in some 290 lines of tracebacks ("Nanny failed to start"). The multiprocessing pool hides the
script from its children (``backends.pool.processes``), but dask's nannies start and restart
workers in their own threads, at any time, where no such hiding can be scoped. So the caller is
told at once, in one line, what to add.
"""

from __future__ import annotations

import ast
import sys
from types import FrameType

from ...errors import OrchestrixError

__all__ = ["check_main_guard"]


def check_main_guard() -> None:
    """Raise if the caller's script runs orchestrix at its top level, not under the guard
    (``nanny.SpawningNanny`` starts workers with spawn, whatever dask's configuration says)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = _top_level_frame(main)
    if path is None or frame is None:
        return  # no script (a notebook, python -c), or not run from its top level
    try:
        with open(path, encoding="utf-8") as stream:
            tree = ast.parse(stream.read())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    if any(_is_guard(node) and node.lineno <= line <= (node.end_lineno or 0) for node in tree.body):
        return
    raise OrchestrixError(
        f"local_dask re-runs {path} in each worker it starts, and line {line} would start "
        'orchestrix again there: put the code that runs it under `if __name__ == "__main__":`'
    )


def _top_level_frame(main: object) -> FrameType | None:
    """The frame of the script's module code on this thread's stack, if any."""
    namespace = getattr(main, "__dict__", None)
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is namespace:
            return frame
        frame = frame.f_back
    return None


def _is_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either side of the ``==``)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    sides = [test.left, *test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    strings = {s.value for s in sides if isinstance(s, ast.Constant)}
    return isinstance(test.ops[0], ast.Eq) and names == {"__name__"} and strings == {"__main__"}
