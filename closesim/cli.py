"""`close-sync sim`: serve the simulator until SIGINT/SIGTERM, then write the snapshot if asked."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from closesim.app import Simulator, make_app
from closesim.config import SimConfig

log = logging.getLogger("closesim")


def run_from_cli(
    host: str,
    port: int,
    api_key: str,
    seed: str | None = None,
    search_rate: float = 16.0,
    write_rate: float = 40.0,
    time_scale: float = 1.0,
    no_limits: bool = False,
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    search_lag: float = 0.0,
    fault_rate: float = 0.0,
    ambiguous_rate: float = 0.0,
    ratelimit_separator: str = ",",
    snapshot: str | None = None,
    merge_delay_seconds: float = 0.0,
    term_case: str = "sensitive",
    rate_groups: str = "close",
) -> None:
    """Build the config from the command's options and serve; the API key is never logged."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config = SimConfig()
    config.update(
        api_keys=[api_key],
        search_rate=search_rate,
        write_rate=write_rate,
        time_scale=time_scale,
        limits_enabled=not no_limits,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        search_lag=search_lag,
        fault_rate=fault_rate,
        ambiguous_rate=ambiguous_rate,
        ratelimit_separator=ratelimit_separator,
        merge_delay_seconds=merge_delay_seconds,
        term_case=term_case,
        rate_groups=_rate_groups(rate_groups),
    )
    simulator = Simulator(config)
    if seed:
        load_seed(simulator, seed)
    asyncio.run(_serve(simulator, host, port))
    if snapshot:
        Path(snapshot).write_text(json.dumps(simulator.store.snapshot(), indent=2))
        log.info("snapshot written to %s", snapshot)


def _rate_groups(value: str) -> Any:
    """A preset's name as is; anything else names a JSON file holding a list of groups."""
    from closesim.groups import PRESETS, parse_rules

    if value == "close" or value in PRESETS:
        return value
    try:
        groups = json.loads(Path(value).read_text(encoding="utf-8"))
        parse_rules(groups)
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(
            f"--rate-groups {value}: not a preset (close, {', '.join(PRESETS)}) nor a JSON file of groups ({exc})"
        ) from None
    return groups


def load_seed(simulator: Simulator, path: str) -> None:
    """Seed from a JSON file (README, "The simulator's seed"); ValueError naming the file and the problem."""
    from closesim.errors import ApiError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--seed {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        simulator.store.seed(data)
    except ApiError as exc:
        field_errors = getattr(exc, "field_errors", None)
        detail = str(exc) if not field_errors else json.dumps(field_errors)
        raise ValueError(f"--seed {path}: {detail} (the format is in the README, under the simulator's seed)") from None
    counts = simulator.store.counts()
    log.info("seeded from %s: %d lead(s), %d contact(s)", path, counts["leads"], counts["contacts"])


async def _serve(simulator: Simulator, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(simulator), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts = simulator.store.counts()
    settings = _public_settings(simulator.config)
    # One machine-readable line on stdout so scripts can find the port when --port 0 was used.
    print(json.dumps({"sim": "ready", "base_url": f"http://{host}:{bound}/api/v1/", **counts}), flush=True)
    log.info("Close API simulator on http://%s:%s/api/v1/ (%s)", host, bound, settings)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def _public_settings(config: SimConfig) -> str:
    shown: dict[str, Any] = config.to_json(mask_keys=True)
    shown.pop("api_keys")
    return ", ".join(f"{k}={v}" for k, v in shown.items())
