"""Shared fixtures. The simulator fixtures start a real HTTP server: tests using them are `integration`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import fields

import pytest

from closecrm.engine.writes.ledger import CreatedIdLedger
from closesim import SimConfig, SimServer

pytest_plugins = ["tests.servers"]  # Pub/Sub emulator, Kafka broker and PostgreSQL fixtures

# Knobs every `sim` test starts from: defaults, except rate limits are OFF for speed.
# A test that pins rate limiting turns them on: sim.configure(limits_enabled=True, ...).
SIM_TEST_DEFAULTS = {f.name: getattr(SimConfig(), f.name) for f in fields(SimConfig)} | {
    "limits_enabled": False
}


@pytest.fixture(autouse=True)
def own_user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test has a user cache of its own ($XDG_CACHE_HOME, inherited by the processes it starts):
    the job's default state location is there, so no test reads the ids another test's run created
    (the session simulator keeps its URL across tests), nor the developer's own cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    yield
    CreatedIdLedger.close_all()  # the next test's jobs read their ledger from their own cache


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimServer]:
    """One simulator for the whole session; use `sim` to get it clean."""
    server = SimServer(SimConfig(**SIM_TEST_DEFAULTS))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimServer) -> Iterator[SimServer]:
    """The session simulator, reset: no data, default statuses, default knobs with limits disabled."""
    sim_server.configure(**SIM_TEST_DEFAULTS)
    sim_server.reset()
    yield sim_server
    sim_server.configure(**SIM_TEST_DEFAULTS)
    sim_server.reset()


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimServer]]:
    """Start extra simulators with their own config (e.g. several API keys); all stopped at teardown."""
    started: list[SimServer] = []

    def make(**knobs: object) -> SimServer:
        server = SimServer(SimConfig(**knobs))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as the writer runs its engine."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
