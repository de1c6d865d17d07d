"""Fuzz fixtures: the engine tests' simulator-backed Close environment."""

from tests.engine.conftest import close  # noqa: F401 - re-exported as a fixture
