"""The `close-sync` console script: one entry point, one subcommand per job."""

from __future__ import annotations

from pathlib import Path

import click

from closecrm.wiring import EngineSpec
from pipeline.cli_common import check_close, fail, key_source, setup_logging, warn
from pipeline.cli_export import export
from pipeline.cli_options import (
    API_KEY_FILE,
    CLOSE_URL,
    budget_share_option,
    no_created_ids_option,
    refuse_secrets_in_args,
    refuse_unknown_options,
    replaced_created_ids_dir_option,
    state_location_option,
)
from pipeline.cli_snapshot import snapshot_sync
from pipeline.demo import main as demo
from transforms.objects import BEAM_OBJECTS


class _RefuseSecretArgs(click.Group):
    """Checks every argument for a secret before any subcommand parses, loads or starts anything."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # The simulator's --api-key is the made-up key its clients must send, not a Close key.
        if next((a for a in args if not a.startswith("-")), None) != "sim":
            refuse_secrets_in_args(args)
        return super().parse_args(ctx, args)


@click.group(cls=_RefuseSecretArgs, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--verbose", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Keep Close CRM leads and contacts in sync with customer events.

    \b
    Example:
      close-sync demo                     # the whole job on sample events and a local simulator
      close-sync run --help
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    setup_logging(verbose)


@main.command()
@click.option("--host", default="127.0.0.1", help="Interface to listen on.")
@click.option("--port", default=8765, type=int, help="Port to listen on.")
@click.option("--api-key", required=True, help="The key clients must send (a test key, not a real one).")
@click.option(
    "--seed",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON state to start from: custom fields, statuses, leads with their contacts, ids as given "
    "(e.g. examples/sim-seed.json).",
)
@click.option("--search-rate", type=float, default=16.0, help="Search requests per second per key.")
@click.option("--write-rate", type=float, default=40.0, help="Requests per second per key for other groups.")
@click.option("--time-scale", type=float, default=1.0, help="Multiply every rate by this (fast benchmarks).")
@click.option("--no-limits", is_flag=True, help="Disable rate limiting.")
@click.option("--latency-ms", type=float, default=0.0, help="Fixed response latency.")
@click.option("--jitter-ms", type=float, default=0.0, help="Random extra latency, up to this.")
@click.option("--search-lag", type=float, default=0.0, help="Seconds before a write is visible to search.")
@click.option("--fault-rate", type=float, default=0.0, help="Share of requests answered with a random 5xx.")
@click.option("--ambiguous-rate", type=float, default=0.0, help="Share of writes committed then failed.")
@click.option("--ratelimit-separator", type=click.Choice([",", ";"]), default=",", help="Header separator.")
@click.option(
    "--term-case",
    type=click.Choice(["sensitive", "insensitive"]),
    default="sensitive",
    help="Whether a search's term condition compares text as stored or case-folded (Close does not say).",
)
@click.option("--snapshot", type=click.Path(dir_okay=False), help="Write the state here on shutdown.")
@click.option(
    "--rate-groups",
    default="close",
    help="Rate-limit groups and windows: close (search, read, lead_write, contact_write, other), "
    "foreign (a grouping the client does not assume), or a JSON file with a list of "
    "{name, endpoints, limit, window}.",
)
def sim(**kwargs: object) -> None:
    """Serve a local Close API at http://HOST:PORT/api/v1/.

    \b
    Example:
      close-sync sim --port 8765 --api-key test_key --search-lag 2
    """
    from closesim.cli import run_from_cli

    try:
        run_from_cli(**kwargs)
    except ValueError as exc:  # a bad --seed file, or a knob out of range
        fail(click.get_current_context(), exc)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config; none = the default identify mapping.")
@click.option("--source", type=click.Choice(["files", "pubsub", "kafka"]), required=True, help="Where events come from.")
@click.option("--input", "input_glob", help="Files: glob of .jsonl/.json/.avro/.parquet (.gz for JSON lines).")
@click.option("--subscription", help="Pub/Sub subscription path projects/P/subscriptions/S.")
@click.option("--topic", help="Pub/Sub topic path projects/P/topics/T (a subscription is made for the run).")
@click.option("--timestamp-attribute", help="Pub/Sub attribute holding the event time.")
@click.option("--bootstrap-servers", help="Kafka bootstrap servers, host:port[,host:port].")
@click.option("--kafka-topic", help="Kafka topic to read.")
@click.option(
    "--kafka-reader",
    type=click.Choice(["python", "java"]),
    help="Kafka reader: python (a splittable DoFn over confluent-kafka; the only one on the DirectRunner "
    "and Prism) or java (Beam's ReadFromKafka, the default on Dataflow and Flink).",
)
@CLOSE_URL
@API_KEY_FILE
@click.option(
    "--dead-letter",
    "dead_letter",
    help="Directory for the run's dead letters, one new file per run (dead-letters-<run id>.jsonl); "
    "local runs default to a folder of their own, ./close-sync-runs/<run id>/.",
)
@click.option("--dead-letter-topic", help="Optional Pub/Sub topic for dead letters.")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="One JSON line per request applied.")
@click.option("--dry-run", is_flag=True, help="Read Close and decide, but write nothing; print the plan.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr during a local run.")
@budget_share_option()
@state_location_option()
@no_created_ids_option()
@replaced_created_ids_dir_option()
@click.pass_context
def run(ctx: click.Context, config_path: str | None, **opts: object) -> None:
    """Run the sync job. Extra arguments are Beam pipeline options (e.g. --runner DataflowRunner); any
    other option is refused before anything runs. Makes validate's checks first.

    Exits 0 when every event was applied, unchanged or skipped; 1 (with the count) when any was dead-lettered.

    \b
    Example:
      CLOSE_API_KEY=... close-sync run --config close.yaml --source files \\
          --input 'events/*.jsonl' --dead-letter out/ --audit-log out/audit.jsonl
      close-sync run --config close.yaml --source files --input 'events/*.jsonl' --dry-run
    """
    import asyncio
    import tempfile

    own = [flag for param in ctx.command.params for flag in param.opts if flag.startswith("--")]
    passed = refuse_unknown_options(ctx.args, own, "run")  # before anything loads, reads or writes

    from pipeline.cli_common import check_input_files
    from pipeline.config import load_config
    from pipeline.runjob import RunRequest, beam_options, dead_letter_file
    from pipeline.runjob import run as run_job
    from pipeline.runners import is_direct
    from pipeline.sources import SourceOptions
    from pipeline.state_location import ledger_location, runs_on_this_machine
    from pipeline.summary import dead_letters_line

    if passed:
        click.echo(f"note: {', '.join(passed)} passed to the runner's job server unchecked", err=True)
    plan_dir: tempfile.TemporaryDirectory[str] | None = None
    try:
        config = load_config(config_path)
        warn(config)
        runner_options = beam_options(ctx.args, streaming=False)
        local = is_direct(runner_options)
        # before Close or any input is touched: a distributed run without a shared state location stops here
        ledger_location(
            opts["state_location"],
            str(opts["close_url"]),
            on_this_machine=runs_on_this_machine(runner_options),
            enabled=not opts["no_created_ids"],
        )
        source = SourceOptions(
            source=opts["source"],
            input=opts["input_glob"],
            subscription=opts["subscription"],
            topic=opts["topic"],
            timestamp_attribute=opts["timestamp_attribute"],
            bootstrap_servers=opts["bootstrap_servers"],
            kafka_topic=opts["kafka_topic"],
        )
        if source.source == "files":
            check_input_files(str(source.input))
        audit_log = opts["audit_log"]
        if opts["dry_run"] and local and not audit_log:
            # The plan is printed from the audit lines; without --audit-log they live only as long as the run.
            plan_dir = tempfile.TemporaryDirectory(prefix="close-sync-plan-")
            audit_log = str(Path(plan_dir.name) / "plan.jsonl")
        keys = key_source(opts["api_key_file"], config)
        calls = asyncio.run(check_close(str(opts["close_url"]), keys, config, float(opts["budget_share"])))
        request = RunRequest(
            source=source,
            close_url=str(opts["close_url"]),
            key_source=keys,
            dead_letter_dir=opts["dead_letter"],
            dead_letter_topic=opts["dead_letter_topic"],
            audit_log=audit_log,
            dry_run=bool(opts["dry_run"]),
            budget_share=float(opts["budget_share"]),
            state_location=opts["state_location"],
            remember_created_ids=not opts["no_created_ids"],
            beam_args=tuple(ctx.args),
            progress=not opts["quiet"],
            kafka_reader=opts["kafka_reader"],
        )
        dead = run_job(config, request, validate=False)  # checked above, with the mappings' fields
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    finally:
        if plan_dir is not None:
            plan_dir.cleanup()
    if local:
        click.echo(f"start-up check: {calls} Close API call(s) before the job, not counted in the summary.")
    if dead:
        where = dead_letter_file(request, local) or request.dead_letter_topic  # the run's own file, else its topic
        raise click.ClickException(dead_letters_line(dead, where))


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config; none = the default identify mapping.")
@CLOSE_URL
@API_KEY_FILE
@click.option(
    "--probe",
    is_flag=True,
    help="Also run each lookup the job sends against your own records (at most 10 calls, read-only).",
)
@click.option(
    "--write",
    is_flag=True,
    help="With --probe: also create one lead named 'close-sync probe <time>', check the write shapes, delete it.",
)
@click.pass_context
def validate(
    ctx: click.Context, config_path: str | None, close_url: str, api_key_file: str | None, probe: bool, write: bool
) -> None:
    """Check the config, then check against Close: the key, the settings, and every custom field and
    status the mappings name. Writes nothing. Warns about a field source that reads like a path but is
    a literal (traits.email without $.). --probe then proves each lookup shape on your org's records.

    \b
    Example:
      CLOSE_API_KEY=... close-sync validate --config close.yaml
      CLOSE_API_KEY=... close-sync validate --config close.yaml --probe
    """
    import asyncio

    from pipeline.config import load_config

    if write and not probe:
        raise click.UsageError("--write only goes with --probe: close-sync validate --probe --write")
    try:
        config = load_config(config_path)
        warn(config)
        keys = key_source(api_key_file, config)
        asyncio.run(check_close(close_url, keys, config))
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    named = len(config.close_references())
    click.echo(
        f"ok: config valid, {len(config.mapping_specs())} mapping(s); verified against Close: the API key, "
        f"the settings and the {named} custom field/status id(s) the mappings name"
    )
    if probe:
        from pipeline.cli_probe import run_probe_command

        run_probe_command(ctx, close_url, keys, config, write)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML/JSON config; none = the default identify mapping.")
@click.option(
    "--dead-letter",
    "dead_letter",
    required=True,
    type=click.Path(exists=True),
    help="A dead-letter file, or a folder: every run's dead-letters-*.jsonl in it.",
)
@CLOSE_URL
@API_KEY_FILE
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Where letters that fail again go; a new file, never an existing one, in a folder that exists "
    "(default: still-failing-<replay id>.jsonl beside the letters).",
)
@state_location_option()
@click.option(
    "--again",
    is_flag=True,
    help="Apply letters again that an earlier replay to this Close already applied "
    "(recorded in replayed-letters.log beside the letters).",
)
@click.pass_context
def replay(
    ctx: click.Context,
    config_path: str | None,
    dead_letter: str,
    close_url: str,
    api_key_file: str | None,
    out_path: str | None,
    state_location: str | None,
    again: bool,
) -> None:
    """Apply dead letters again: each letter's original event is mapped with this --config (so a fixed
    config takes effect), the stored request is sent only for letters without their events (checked
    like a fresh request, with this config's flags), and no "unchanged" suppression. Letters that fail
    again go to a new file; the input is never changed. A letter is applied once: a second replay of
    the same letters skips those already applied, unless --again. Files and lines that cannot be read
    are skipped and listed; the rest is replayed.

    Exits 0 when every letter was applied, skipped or already replayed; 1 when any failed again or
    could not be read.

    \b
    Example:
      CLOSE_API_KEY=... close-sync replay --config close.yaml --dead-letter close-sync-runs/RUN_ID/
    """
    from pipeline.config import load_config
    from pipeline.replay import replay_path
    from pipeline.state_location import announce, ledger_location

    try:
        config = load_config(config_path)
        ledger = ledger_location(state_location, close_url, on_this_machine=True)  # replay runs here
        announce(ledger)
        spec = EngineSpec(
            close_url,
            key_source(api_key_file, config),
            config.settings_model(),
            created_ids=ledger,
            objects=BEAM_OBJECTS,
        )
        report = replay_path(config, spec, dead_letter, out_path, again)
    except Exception as exc:  # noqa: BLE001
        fail(ctx, exc)
        return
    click.echo(report.line())
    for line in report.skipped_lines():
        click.echo(line)
    problems = report.problems()
    if problems:
        raise click.ClickException(problems)


main.add_command(export)
main.add_command(demo, name="demo")
main.add_command(snapshot_sync)

if __name__ == "__main__":
    main()
