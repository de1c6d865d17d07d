"""SimServer: the simulator on its own event loop in a daemon thread, with a thread-safe in-process API."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from closesim.app import Simulator, make_app
from closesim.config import SimConfig


class SimServer:
    """Start with ``start()`` (or as a context manager); steer it with the methods below from any thread.

    Data methods go through the store's lock, so they are safe while the loop serves requests.
    """

    def __init__(self, config: SimConfig | None = None, term_case: str | None = None):
        """``term_case`` ("sensitive" or "insensitive"), when given, overrides the config's: whether
        a search's `term` condition compares text as stored or case-folded."""
        self.config = config or SimConfig()
        if term_case is not None:
            self.config.update(term_case=term_case)
        self.simulator = Simulator(self.config)
        self.base_url = ""
        self.root_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------- life

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = a free port) and return the API base URL."""
        if self._thread is not None:
            return self.base_url
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                bound = loop.run_until_complete(self._open(host, port))
                self.root_url = f"http://{host}:{bound}/"
                self.base_url = f"{self.root_url}api/v1/"
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="close-sim", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self.base_url

    async def _open(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(make_app(self.simulator), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        return int(server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ steering

    @property
    def api_key(self) -> str:
        return self.config.api_keys[0]

    def configure(self, **knobs: Any) -> None:
        """Change knobs at runtime, e.g. ``configure(search_lag=0.3, limits_enabled=True)``."""
        self.simulator.configure(**knobs)

    def reset(self) -> None:
        """Clear data, custom fields, stats, rate windows and storms; the default statuses are re-created."""
        self.simulator.reset()

    def seed(self, data: dict[str, Any]) -> None:
        self.simulator.store.seed(data)

    def create_custom_field(self, object_type: str, name: str, type: str = "text", **extra: Any) -> str:
        return self.simulator.store.create_custom_field(object_type, {"name": name, "type": type, **extra})[
            "id"
        ]

    def create_shared_custom_field(
        self, name: str, associations: tuple[str, ...] = ("lead", "contact"), type: str = "text", **extra: Any
    ) -> str:
        """A shared custom field associated with these object types; returns its id."""
        data = {"name": name, "type": type, "associations": [{"object_type": t} for t in associations], **extra}
        return self.simulator.store.create_custom_field("shared", data)["id"]

    def create_status(self, label: str) -> str:
        return self.simulator.store.create_status({"label": label})["id"]

    def statuses(self) -> list[dict[str, Any]]:
        return self.simulator.store.statuses()

    def leads(self) -> list[dict[str, Any]]:
        """Every lead as GET /lead/{id}/ renders it (nested contacts), oldest first."""
        return self.simulator.store.leads()

    def contacts(self) -> list[dict[str, Any]]:
        return self.simulator.store.contacts()

    def merges(self) -> list[dict[str, Any]]:
        """Every lead merge asked for since the last reset, oldest first: source, destination,
        merge_status ("in_progress", "completed" or "failed"), date_created, date_completed."""
        return self.simulator.store.merges()

    def stats(self) -> dict[str, Any]:
        return {**self.simulator.stats.to_json(), **self.simulator.store.counts()}

    def start_storm(self, seconds: float) -> None:
        self.simulator.faults.start_storm(seconds)

    def snapshot(self) -> dict[str, Any]:
        return self.simulator.store.snapshot()
