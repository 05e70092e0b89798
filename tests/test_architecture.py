"""The layers of orchestrix (docs/architecture.md): which part may import which, and module size.

Imports are read from the source (every import, lazy ones inside functions too), so a new
dependency against the layering fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrix

SOURCE = Path(orchestrix.__file__).parent
PURE = {
    "errors",
    "failures",
    "records",
    "atomic",
    "runcontext",
    "config",
    "config_compat",
    "checks",
    "sizing",
}
#: part -> the parts it may import; a part not listed here may import nothing of orchestrix
ALLOWED = {
    "errors": set(),
    "records": set(),
    "failures": {"errors"},
    "atomic": {"errors"},
    "checks": set(),
    "config": {"errors", "checks", "config_compat"},
    "config_compat": {"errors"},
    "sizing": {"errors"},
    "graph": {"errors"},
    "worker": {"graph"} | PURE,
    "monitoring": {"worker", "graph"} | PURE,
    "journal": {"monitoring", "worker", "graph"} | PURE,
    "reports": {"monitoring", "worker", "graph"} | PURE,
    # the backend contract knows nothing of the records kept of a run (it is handed a Recorder)
    "backends": {"backends.pool", "backends.dask", "worker", "graph"} | PURE,
    "backends.pool": {"backends", "worker", "graph"} | PURE,
    "backends.dask": {"backends", "worker", "graph"} | PURE,
    "engine": {"backends", "monitoring", "worker", "graph"} | PURE,
    # what an Orchestrator runs with, found without starting one: no backend is imported
    "resolve": {"backends"} | PURE,
    # a plugin for a host application (CARS): on top of the facade, which never imports it
    "cars": {"orchestrator", "resolve", "graph"} | PURE,
    "session": {"engine", "backends", "monitoring", "journal", "reports", "worker", "graph"} | PURE,
}
# the facade and entry points (cars: CARS's plugin, on top of the facade): anything
TOP = {"orchestrator", "orchestrix", "demo", "__main__", "cars"}
MAX_LINES = 500


def _part(module: str) -> str:
    parts = module.split(".")[1:] or ["orchestrix"]
    if parts[0] == "backends" and len(parts) > 1 and parts[1] in ("pool", "dask"):
        return f"backends.{parts[1]}"
    return parts[0]


def _imports() -> dict[str, set[str]]:
    """part -> the parts its modules import."""
    found: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        parts = ("orchestrix", *path.relative_to(SOURCE).with_suffix("").parts)
        package = parts if parts[-1] == "__init__" else parts[:-1]
        package = tuple(p for p in package if p != "__init__")
        module = ".".join(p for p in parts if p != "__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                if node.module:
                    targets = [f"{base}.{node.module}"]
                else:
                    targets = [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                targets = [name for name in names if name.split(".")[0] == "orchestrix"]
            for target in targets:
                found.setdefault(_part(module), set()).add(_part(target))
    return found


def test_every_part_imports_only_the_layers_below_it():
    wrong = {}
    for part, imported in _imports().items():
        if part in TOP:
            continue
        assert part in ALLOWED, f"{part}: a new part of orchestrix; give it a place in ALLOWED"
        extra = imported - ALLOWED[part] - {part}
        if extra:
            wrong[part] = sorted(extra)
    assert wrong == {}


def test_the_layer_check_sees_lazy_imports():
    assert "backends.dask" in _imports()["backends"]  # the registry imports them in functions


def test_no_module_is_over_500_lines():
    sizes = {
        str(path.relative_to(SOURCE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in SOURCE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
