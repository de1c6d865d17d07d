"""`close-sync validate --probe`: run the probe (closecrm/probe.py) and print each step; the exit status
says whether every lookup shape the job relies on holds on the user's own org."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.cli_common import fail

if TYPE_CHECKING:
    from closecrm.probe import ProbeReport
    from closecrm.wiring import KeySource
    from pipeline.config import JobConfig


def run_probe_command(
    ctx: click.Context, close_url: str, keys: KeySource, config: JobConfig, write: bool
) -> None:
    """Print each probe step; exit non-zero naming every shape that failed."""
    import asyncio

    from closecrm.probe import run_probe
    from closecrm.wiring import client_for

    async def go() -> ProbeReport:
        async with client_for(close_url, keys) as client:
            return await run_probe(client, config.settings_model(), write=write)

    try:
        report = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    for step in report.steps:
        click.echo(step.line())
    click.echo(report.summary())
    if report.failed:
        raise click.ClickException(
            f"probe failed: {', '.join(report.failed)}; the job would miss or duplicate records with this "
            "shape (see README, Troubleshooting: 'probe failed')"
        )
