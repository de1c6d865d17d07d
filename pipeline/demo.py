"""`make demo`: the real pipeline on the bundled sample events, against the Close simulator started in-process."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EVENTS = EXAMPLES / "events.jsonl"
CONFIG = EXAMPLES / "demo-config.yaml"
# The simulator's starting state: the custom fields examples/demo-config.yaml names, with those ids.
# `close-sync sim --seed examples/sim-seed.json` starts the same organisation.
SEED = EXAMPLES / "sim-seed.json"
DEMO_KEY = "demo_key_not_a_real_one"
COMPANY_CF = "cf_demo_company_id"
USER_CF = "cf_demo_user_id"
PLAN_CF = "cf_demo_plan"
CUSTOM_FIELDS: dict[str, list[dict[str, Any]]] = json.loads(SEED.read_text(encoding="utf-8"))["custom_fields"]
REDELIVERIES = 25  # at-least-once sources redeliver: the same messageId again, dropped by dedupe


def sample_lines(seed: int = 7) -> list[str]:
    """The bundled events: 500 users of 120 companies, identify on every page load, pages and tracks between,
    a second phone for some, a few redelivered messages, and every kind of bad event."""
    from pipeline.samples import BAD_LINES, events

    rng = random.Random(seed)
    lines = [json.dumps(e, sort_keys=True) for e in events(n_users=500, n_companies=120, events_per_user=6, seed=seed)]
    for line in rng.sample(lines, REDELIVERIES):
        lines.insert(rng.randrange(len(lines)), line)
    for bad in BAD_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    return lines


def write_samples(path: Path = EVENTS) -> int:
    lines = sample_lines()
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def start_simulator(rate_limits: bool) -> Any:
    """The simulator on a free port, seeded from examples/sim-seed.json; Close's real rate limits unless told not to."""
    from closesim import SimConfig, SimServer

    sim = SimServer(SimConfig(api_keys=[DEMO_KEY], limits_enabled=rate_limits))
    sim.start()
    sim.seed(json.loads(SEED.read_text(encoding="utf-8")))
    return sim


def leads_table(leads: list[dict[str, Any]], n: int, per_lead: int = 3) -> Table:
    """The n leads with the most contacts, a few contacts each: who, which user id and plan, and their phones
    (the second phones were appended by later events, never replacing the first). A lead is shown by its
    display name, as Close shows it: its name, or its first contact's when it has none."""
    table = Table(title=f"a few of the {len(leads)} leads in the simulator (most contacts first)", show_lines=False)
    table.add_column("lead · company id")
    table.add_column("contact · user id · plan")
    table.add_column("email")
    table.add_column("phones")
    ranked = sorted(leads, key=lambda lead: (-len(lead.get("contacts") or []), lead.get("date_created", "")))
    for lead in ranked[:n]:
        contacts = lead.get("contacts") or []
        lead_cell = f"{lead.get('display_name') or lead['id']}\n{lead.get(f'custom.{COMPANY_CF}', '-')}"
        for i, contact in enumerate(contacts[:per_lead]):
            more = f"\n(+{len(contacts) - per_lead} more contacts)" if i == 0 and len(contacts) > per_lead else ""
            table.add_row(
                lead_cell + more if i == 0 else "",
                f"{contact.get('name') or '(no name)'}\n"
                f"{contact.get(f'custom.{USER_CF}', '-')} · {contact.get(f'custom.{PLAN_CF}', '-')}",
                "\n".join(e["email"] for e in contact.get("emails") or []),
                "\n".join(p["phone"] for p in contact.get("phones") or []) or "-",
                end_section=i == min(len(contacts), per_lead) - 1,
            )
    return table


def calls_table(job: dict[str, int], check: dict[str, int], events: int) -> Table:
    """The calls the simulator served: the job's by endpoint group (their total is the run summary's
    "calls total"), then the start-up check's, and both together (all the simulator saw)."""
    table = Table(title="Close API calls the simulator served")
    table.add_column("endpoint group")
    table.add_column("calls", justify="right")
    table.add_column("per event read", justify="right")

    def per_event(n: int) -> str:
        return f"{n / events:.3f}" if events else "-"

    for group, n in sorted(job.items()):
        table.add_row(group, f"{n:,}", per_event(n))
    total = sum(job.values())
    table.add_row("the job, total", f"{total:,}", per_event(total), style="bold", end_section=True)
    checked = sum(check.values())
    table.add_row("start-up check", f"{checked:,}", "")
    table.add_row("served in all", f"{total + checked:,}", "")
    return table


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--events", "events_path", type=click.Path(dir_okay=False), default=str(EVENTS), help="Events to sync.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=str(CONFIG), help="Job config.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Keep the dead letters and the audit log "
              "here (default: a temporary directory, removed at the end).")
@click.option("--snapshot", type=click.Path(dir_okay=False), help="Also write the simulator's final state here (JSON).")
@click.option("--show", "show_leads", type=int, default=5, help="How many leads to show.")
@click.option("--rate-limits/--no-rate-limits", default=True, help="Serve with Close's rate limits (16 searches/s, "
              "40 writes/s per key).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--regenerate", is_flag=True, help="Rewrite examples/events.jsonl from pipeline.samples and exit.")
def main(
    events_path: str,
    config_path: str,
    out_dir: str | None,
    snapshot: str | None,
    show_leads: int,
    rate_limits: bool,
    quiet: bool,
    regenerate: bool,
) -> None:
    """Start the Close simulator in-process, run the real pipeline (DirectRunner, files source) on the bundled
    sample events, and show what it did: the summary table, a few leads and contacts, the API calls per event.

    \b
    Example:
      close-sync demo --out /tmp/demo --snapshot /tmp/demo/state.json
    """
    import asyncio

    from closecrm.wiring import KeySource
    from pipeline.cli_common import check_close
    from pipeline.config import load_config
    from pipeline.runjob import RunRequest, dead_letter_file, run
    from pipeline.sources import SourceOptions
    from pipeline.summary import dead_letter_reasons, reasons_text

    if regenerate:
        click.echo(f"wrote {write_samples(Path(events_path)):,} lines to {events_path}")
        return
    console = Console()
    started = time.monotonic()
    # Without --out the dead letters and the audit log go to a temporary directory, removed at the end.
    scratch = None if out_dir else tempfile.TemporaryDirectory(prefix="close-sync-demo-")
    out = Path(out_dir) if out_dir else Path(scratch.name)  # type: ignore[union-attr]
    try:
        out.mkdir(parents=True, exist_ok=True)
        sim = start_simulator(rate_limits)
        try:
            console.print(
                f"[bold]close-sync demo[/bold]: Close simulator at {sim.base_url} (rate limits "
                f"{'on' if rate_limits else 'off'}), seeded from {SEED.name}: {COMPANY_CF}, {USER_CF}, {PLAN_CF}"
            )
            console.print(f"syncing {events_path} with {config_path}")
            os.environ["CLOSE_API_KEY"] = DEMO_KEY  # the job reads the key from the env, as in production
            config = load_config(config_path)
            # `close-sync run`'s start-up check, counted apart from the job's own calls
            asyncio.run(check_close(sim.base_url, KeySource(), config))
            check = dict(sim.stats()["by_group"])
            request = RunRequest(
                source=SourceOptions(source="files", input=events_path),
                close_url=sim.base_url,
                key_source=KeySource(),
                dead_letter_dir=str(out / "dead"),
                audit_log=str(out / "audit.jsonl"),
                state_location=str(out / "state"),  # the demo's own simulator: no ledger of another
                progress=not quiet,
            )
            dead = run(config, request, validate=False)
            letters_file = dead_letter_file(request)
            leads, contacts, stats = sim.leads(), sim.contacts(), sim.stats()
            if snapshot:
                Path(snapshot).write_text(json.dumps(sim.snapshot(), indent=1, sort_keys=True), encoding="utf-8")
        finally:
            sim.stop()
        job = {group: n - check.get(group, 0) for group, n in stats["by_group"].items() if n > check.get(group, 0)}
        reasons = dead_letter_reasons(out / "dead")
        audit = out / "audit.jsonl"
        requests = sum(1 for line in audit.open(encoding="utf-8") if line.strip()) if audit.exists() else 0
    finally:
        if scratch is not None:
            scratch.cleanup()

    job_calls = sum(job.values())
    events = sum(1 for line in Path(events_path).read_text(encoding="utf-8").splitlines() if line.strip())
    console.print(leads_table(leads, show_leads))
    console.print(calls_table(job, check, events))
    if dead:
        console.print(
            f"[yellow]{dead} bad event(s) were dead-lettered, as intended[/yellow] (the sample data has them on "
            f"purpose: {reasons_text(reasons)}); `close-sync replay` re-sends a dead-letter file once the cause "
            "is fixed."
        )
    if out_dir:
        console.print(
            f"kept: {letters_file} ({sum(reasons.values())} letters) and {audit} "
            f"(one JSON line per request, {requests:,})."
        )
    else:
        console.print(
            f"the dead letters and the audit log ({requests:,} requests) were in a temporary directory, now "
            "removed; give --out DIR to keep them."
        )
    seconds = time.monotonic() - started
    # One parseable line, for scripts and the README's figures: api_calls is the job's, as in both tables.
    click.echo(
        f"demo: events={events} leads={len(leads)} contacts={len(contacts)} api_calls={job_calls} "
        f"calls_per_event={job_calls / events:.3f} searches={job.get('search', 0)} "
        f"check_calls={sum(check.values())} responses_429={stats['responses_429']} "
        f"dead_lettered={dead} seconds={seconds:.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
