"""Fixtures of the CLI tests that run `close-sync` as a user does (see helpers_user.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers_user import SimProcess, Workdir, make_workdir, start_sim, stop_sim


@pytest.fixture(scope="module")
def sim_process() -> Iterator[SimProcess]:
    """`close-sync sim --seed examples/sim-seed.json` in its own process, for the module's tests."""
    sim = start_sim("--no-limits")
    yield sim
    stop_sim(sim)


@pytest.fixture
def user_sim(sim_process: SimProcess) -> SimProcess:
    """The module's simulator, back to the seeded organisation with its stats at zero."""
    sim_process.fresh()
    return sim_process


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    return make_workdir(tmp_path)
