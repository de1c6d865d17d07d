"""Fixtures for the simulator's own tests: a plain httpx client authenticated against `sim`."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from closesim import SimServer


@pytest.fixture
def api(sim: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, auth=(sim.api_key, ""), timeout=10) as client:
        yield client
