"""The `close-sync snapshot-sync` command: reverse ETL from a warehouse table, or from its export."""

from __future__ import annotations

import click

from pipeline.cli_common import fail, key_source
from pipeline.cli_options import (
    API_KEY_FILE,
    CLOSE_URL,
    budget_share_option,
    no_created_ids_option,
    state_location_option,
)


@click.command(
    "snapshot-sync",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "show_default": True},
)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="YAML/JSON config with a snapshot section.",
)
@click.option(
    "--input",
    "input_glob",
    help="Glob of the export's .parquet or .avro files (any Beam filesystem).",
)
@click.option(
    "--from",
    "from_url",
    help="Read the warehouse instead: duckdb:///FILE, duckdb://, postgresql://USER@HOST:PORT/DB or "
    "bigquery://PROJECT (never with a password or another secret in it).",
)
@click.option("--table", help="With --from: the table to read (SCHEMA.NAME).")
@click.option("--query", help="With --from: SQL whose rows are the snapshot.")
@click.option(
    "--since-column",
    help="With --from: read only the rows whose value here is at or after the previous run's "
    "high-water mark, and those where it is NULL.",
)
@click.option(
    "--password-env",
    help="With --from: the environment variable holding the password (default: PGPASSWORD).",
)
@click.option(
    "--password-file",
    help="With --from: a file holding the password (any Beam filesystem).",
)
@click.option(
    "--state",
    "state_dir",
    required=True,
    help="Directory (local, gs://, ...) holding the fingerprints of the last run; "
    "a local one is locked while a run uses it.",
)
@state_location_option()
@no_created_ids_option()
@click.option(
    "--full",
    is_flag=True,
    help="Resend every row, not only new and changed ones; rebuilds a damaged state without reading it.",
)
@click.option(
    "--dry-run", is_flag=True, help="List what would change; write nothing to Close or to the state."
)
@click.option("--plan-dir", help="Where --dry-run writes its plan (default: a new temp directory).")
@CLOSE_URL
@API_KEY_FILE
@click.option("--dead-letter", "dead_letter", help="Directory for dead-letter JSON lines.")
@budget_share_option()
@click.option(
    "--buckets",
    type=click.IntRange(min=1),
    default=128,
    help="Hash buckets of the primary key: the diff joins one bucket at a time (more for bigger tables).",
)
@click.pass_context
def snapshot_sync(ctx: click.Context, config_path: str, **opts: object) -> None:
    """Send the rows of a table, a query or a table export that changed since the last run.
    Extra arguments are Beam options.

    \b
    Examples:
      CLOSE_API_KEY=... close-sync snapshot-sync --config close.yaml --input 'export/*.parquet' --state state/
      PGPASSWORD=... close-sync snapshot-sync --config close.yaml --state state/ \\
          --from postgresql://sync@db:5432/analytics --table public.users --since-column updated_at
    """
    from pipeline.config import load_config
    from pipeline.snapshot_job import SnapshotRequest, run_snapshot, warehouse_source
    from transforms.deadletter import letters_path

    if opts["from_url"]:
        # Before anything else reads or prints it: a URL that cannot be used (one with a secret in
        # it is refused, not masked) is a usage error, as a secret flag is.
        from closecrm.reverse_etl.warehouse_url import WarehouseURL, WarehouseURLError

        try:
            WarehouseURL.parse(str(opts["from_url"]))
        except WarehouseURLError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        config = load_config(config_path)
        source = warehouse_source(
            config,
            input_glob=opts["input_glob"],  # type: ignore[arg-type]
            url=opts["from_url"],  # type: ignore[arg-type]
            table=opts["table"],  # type: ignore[arg-type]
            query=opts["query"],  # type: ignore[arg-type]
            since_column=opts["since_column"],  # type: ignore[arg-type]
            password_env=opts["password_env"],  # type: ignore[arg-type]
            password_file=opts["password_file"],  # type: ignore[arg-type]
        )
        request = SnapshotRequest(
            input=opts["input_glob"],  # type: ignore[arg-type]
            source=source,
            state=str(opts["state_dir"]),
            full=bool(opts["full"]),
            dry_run=bool(opts["dry_run"]),
            close_url=str(opts["close_url"]),
            key_source=key_source(opts["api_key_file"], config),  # type: ignore[arg-type]
            dead_letter_dir=opts["dead_letter"],  # type: ignore[arg-type]
            plan_dir=opts["plan_dir"],  # type: ignore[arg-type]
            budget_share=float(opts["budget_share"]),  # type: ignore[arg-type]
            buckets=int(opts["buckets"]),  # type: ignore[arg-type]
            beam_args=tuple(ctx.args),
            state_location=opts["state_location"],  # type: ignore[arg-type]
            remember_created_ids=not opts["no_created_ids"],
        )
        report = run_snapshot(config, request)
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    if report.failed:
        raise click.ClickException(
            f"{report.failed} row(s) did not reach Close and keep their old state (retried next run)"
            + (
                f"; their dead letters are in {letters_path(request.dead_letter_dir, request.run_id)}"
                if request.dead_letter_dir
                else "; give --dead-letter DIR to keep their dead letters"
            )
            + "."
        )
