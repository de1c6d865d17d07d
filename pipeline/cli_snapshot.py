"""The `close-sync snapshot-sync` command: reverse ETL from a warehouse table export."""

from __future__ import annotations

import click

from pipeline.cli_common import fail, key_source
from pipeline.cli_options import API_KEY_FILE, CLOSE_URL


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
    required=True,
    help="Glob of the export's .parquet or .avro files (any Beam filesystem).",
)
@click.option(
    "--state",
    "state_dir",
    required=True,
    help="Directory (local, gs://, ...) holding the fingerprints of the last run; "
    "a local one is locked while a run uses it.",
)
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
@click.option(
    "--budget-share", type=float, default=1.0, help="Share of the key's rate budget for each worker."
)
@click.option(
    "--buckets",
    type=click.IntRange(min=1),
    default=128,
    help="Hash buckets of the primary key: the diff joins one bucket at a time (more for bigger tables).",
)
@click.pass_context
def snapshot_sync(ctx: click.Context, config_path: str, **opts: object) -> None:
    """Send the rows of a table export that changed since the last run. Extra arguments are Beam options.

    Example: CLOSE_API_KEY=... close-sync snapshot-sync --config close.yaml --input 'export/*.parquet' --state state/
    """
    from pipeline.config import load_config
    from pipeline.snapshot_job import SnapshotRequest, run_snapshot

    try:
        config = load_config(config_path)
        request = SnapshotRequest(
            input=str(opts["input_glob"]),
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
        )
        report = run_snapshot(config, request)
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    if report.failed:
        raise click.ClickException(
            f"{report.failed} row(s) did not reach Close and keep their old state (retried next run); "
            "see --dead-letter output."
        )
