"""`close-sync export`: Close leads and contacts to Parquet or Avro tables (Hull's direction)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pipeline.cli_common import fail, key_source
from pipeline.cli_options import API_KEY_FILE, CLOSE_URL, budget_share_option


@click.command()
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the tables."
)
@click.option(
    "--updated-since", help="Only records with date_updated ≥ this ISO-8601 date/datetime (naive = UTC)."
)
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "avro"]), default="parquet", help="File format."
)
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="Config for settings."
)
@CLOSE_URL
@API_KEY_FILE
@click.option(
    "--slices", type=click.IntRange(1, 64), default=4, show_default=True, help="Time slices read at once."
)
@budget_share_option("Share of the key's rate budget (0 < F <= 1).")
@click.pass_context
def export(
    ctx: click.Context,
    out_dir: str,
    updated_since: str | None,
    fmt: str,
    config_path: str | None,
    close_url: str,
    api_key_file: str | None,
    slices: int,
    budget_share: float,
) -> None:
    """Write DIR/leads.<fmt> and DIR/contacts.<fmt>, each atomically; print a one-line summary.

    Company id and user id columns come from the config's settings (lookup custom fields).

    \b
    Example:
      CLOSE_API_KEY=... close-sync export --out warehouse/ --updated-since 2024-06-01
    """
    from closecrm.reverse_etl.export import ExportRequest, parse_moment
    from closecrm.reverse_etl.export import export as run_export
    from closecrm.wiring import client_for
    from pipeline.config import load_config

    try:
        config = load_config(config_path)
        request = ExportRequest(
            out_dir=Path(out_dir),
            format="avro" if fmt == "avro" else "parquet",
            updated_since=parse_moment(updated_since) if updated_since else None,
            company_id_field=config.settings.lead_custom_field_id_for_company_id,
            user_id_field=config.settings.contact_custom_field_id_for_user_id,
            slices=slices,
        )
        keys = key_source(api_key_file, config)

        async def go() -> str:
            async with client_for(close_url, keys, budget_share=budget_share) as client:
                return (await run_export(client, request)).line()

        line = asyncio.run(go())
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    click.echo(line)
