"""The configuration reference in docs/ is generated from the code and must match it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "docs" / "make_config_table.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="docs/ is not part of this checkout")
def test_configuration_reference_matches_code():
    spec = importlib.util.spec_from_file_location("make_config_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.embedded() == module.table(), "run: python docs/make_config_table.py --write"


def test_sphinx_site_builds_without_warnings(tmp_path):
    """What ``tox -e docs`` runs: every page, every cross-reference and the API reference."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    import subprocess
    import sys

    docs = Path(__file__).resolve().parent.parent / "docs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            docs,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "api.html").exists() and (tmp_path / "failures.html").exists()
