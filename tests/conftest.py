"""Shared fixtures: every contract test runs on every backend that exists."""

from __future__ import annotations

import pytest

import orchestrix as ox
from orchestrix.backends import AVAILABLE

BACKEND_MODES = sorted(AVAILABLE)


@pytest.fixture(params=BACKEND_MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def orch(mode: str):
    with ox.Orchestrator(mode=mode) as orchestrator:
        yield orchestrator


@pytest.fixture
def oracle():
    """The sequential orchestrator: what every backend must reproduce."""
    with ox.Orchestrator(mode="sequential") as orchestrator:
        yield orchestrator
