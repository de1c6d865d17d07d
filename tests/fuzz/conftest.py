"""Fuzz fixtures: the engine tests' simulator-backed Close environment."""

import pytest

from tests.engine.conftest import close  # noqa: F401 - re-exported as a fixture


@pytest.fixture(params=["sensitive", "insensitive"])
def term_case(request: pytest.FixtureRequest) -> str:
    """Every differential runs against both readings of Close's `term` condition."""
    return str(request.param)
