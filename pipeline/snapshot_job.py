"""`close-sync snapshot-sync`: check the export's schema, diff it against the last state, upsert the changes, commit the state."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from rich.console import Console
from rich.table import Table

from closecrm.credentials import DEFAULT_CLOSE_URL, EngineSpec, KeySource
from closecrm.snapshot import SchemaDrift, SnapshotSpec, arrow_kind, avro_kind, check_schema
from pipeline import summary
from pipeline.config import ConfigError, JobConfig, JobOptions
from pipeline.runjob import beam_options, is_direct, start
from pipeline.snapshot_state import Generation, SnapshotState, StateCorrupt
from transforms import metrics as m
from transforms.deadletter import DEAD, WriteDeadLetters
from transforms.snapshot import (
    DEFAULT_BUCKETS,
    DIFF_PREFIX,
    GONE,
    KEEP,
    ROWS_INVALID,
    ROWS_READ,
    STATE_ROWS,
    ChangesToRequests,
    DiffSnapshot,
    FingerprintTables,
    WriteFingerprints,
    WriteSample,
    settled_fingerprint,
)
from transforms.writer import UpsertToClose

FORMATS = {".parquet": "parquet", ".parq": "parquet", ".avro": "avro"}
GONE_SAMPLE = "_gone_sample.json"
CHANGE_SAMPLE = "_change_sample.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRequest:
    """What `close-sync snapshot-sync` was asked to do."""

    input: str
    state: str
    full: bool = False
    dry_run: bool = False
    close_url: str = DEFAULT_CLOSE_URL
    key_source: KeySource = KeySource()
    dead_letter_dir: str | None = None
    plan_dir: str | None = None  # where --dry-run writes its plan (default: a new local temp dir)
    budget_share: float = 1.0
    sample_size: int = 20
    buckets: int = DEFAULT_BUCKETS  # hash buckets of the primary key the diff joins in
    beam_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SnapshotReport:
    """How a run ended: Beam counters, samples of gone and changed keys, and where things were written."""

    counts: dict[str, int]
    gone_sample: list[str]
    change_sample: list[str]
    generation: str | None  # the state generation committed (None for dry runs)
    plan_dir: str | None

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    @property
    def failed(self) -> int:
        """Rows that did not reach Close: refused by Close or unusable; they are retried next run."""
        return self.count(m.OUTCOME_PREFIX + "failed") + self.count(ROWS_INVALID)

    @property
    def calls(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith(m.CALLS_PREFIX))


# ---------------------------------------------------------------------------- input checks


def input_files(pattern: str) -> tuple[str, list[str]]:
    """The files the glob matches and their one format; errors when none match or formats mix."""
    files = sorted(md.path for md in FileSystems.match([pattern])[0].metadata_list)
    if not files:
        raise ValueError(f"--input {pattern}: no files match")
    formats = set()
    for path in files:
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if suffix not in FORMATS:
            raise ValueError(f"--input: {path} is neither .parquet nor .avro")
        formats.add(FORMATS[suffix])
    if len(formats) > 1:
        raise ValueError(f"--input {pattern}: mixes Parquet and Avro files; give one table export at a time")
    return formats.pop(), files


def column_kinds(path: str, file_format: str) -> dict[str, str]:
    """Column -> kind from a file's own schema (the footer or the header only, not the rows)."""
    with FileSystems.open(path) as fh:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(fh)
            return {f.name: arrow_kind(f.type) for f in schema}
        import fastavro

        schema = fastavro.reader(fh).writer_schema
        return {f["name"]: avro_kind(f["type"]) for f in schema.get("fields", [])}


def check_input(spec: SnapshotSpec, pattern: str) -> str:
    """Every matched file's schema against the spec; raises `SchemaDrift` before anything is written."""
    file_format, files = input_files(pattern)
    problems = [p for path in files for p in check_schema(spec, column_kinds(path, file_format), path)]
    if problems:
        raise SchemaDrift(problems)
    return file_format


# ---------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class SnapshotShape:
    """One snapshot run's graph: the table, the state, the config's options (no secrets)."""

    spec: SnapshotSpec
    input: str
    file_format: str
    state_pattern: str | None
    out_dir: str  # the new state generation, or the dry-run plan
    engine: EngineSpec
    options: JobOptions
    shards: int  # writer keys on this run's runner (JobOptions.shards)
    full: bool
    dry_run: bool
    dead_letter_dir: str | None
    sample_size: int
    buckets: int


def plan_line(pending: Any) -> str:
    event = pending.events[0]
    return json.dumps(
        {
            "primary_key": event["primary_key"],
            "change": event["change"],
            "request": pending.request.to_json(),
        },
        sort_keys=True,
        default=str,
    )


def build(p: beam.Pipeline, shape: SnapshotShape) -> None:
    """read → diff against state → requests → upsert → next state / dead letters (or a plan, in dry runs)."""
    out = shape.out_dir.rstrip("/")
    diff = p | "DiffSnapshot" >> DiffSnapshot(
        shape.spec,
        shape.input,
        shape.file_format,
        shape.state_pattern,
        full=shape.full,
        buckets=shape.buckets,
    )
    requests = diff["changes"] | "ChangesToRequests" >> ChangesToRequests(shape.spec)
    deads = [diff[DEAD], requests[DEAD]]
    settled = [requests[KEEP]]  # (key, fingerprint) pairs of the rows that went through requests
    _ = diff[GONE] | "GoneSample" >> WriteSample(f"{out}/{GONE_SAMPLE}", shape.sample_size)
    _ = (
        requests.pending
        | "ChangedKeys" >> beam.Map(lambda pending: pending.person)
        | "ChangeSample" >> WriteSample(f"{out}/{CHANGE_SAMPLE}", shape.sample_size)
    )
    if shape.dry_run:
        _ = (
            requests.pending
            | "PlanLines" >> beam.Map(plan_line)
            | "WritePlan" >> beam.io.WriteToText(f"{out}/changes", file_name_suffix=".jsonl")
        )
        _ = diff[GONE] | "WriteGone" >> beam.io.WriteToText(f"{out}/gone", file_name_suffix=".txt")
    else:
        applied = requests.pending | "UpsertToClose" >> UpsertToClose(
            shape.engine,
            shards=shape.shards,
            batch_size=shape.options.batch_size,
            flush_seconds=shape.options.flush_seconds,
            streaming=False,
            dry_run=False,
        )
        deads.append(applied[DEAD])
        settled.append(applied.outcomes | "SettledFingerprints" >> beam.FlatMap(settled_fingerprint))
        settled_tables = settled | "SettledPairs" >> beam.Flatten() | "SettledTables" >> FingerprintTables()
        _ = (
            (diff[KEEP], settled_tables)
            | "NextState" >> beam.Flatten()
            | "WriteState" >> WriteFingerprints(out)
        )
    dead = deads | "AllDeadLetters" >> beam.Flatten()
    if shape.dead_letter_dir:
        _ = dead | "WriteDeadLetters" >> WriteDeadLetters(shape.dead_letter_dir)


# ---------------------------------------------------------------------------- run


def spec_for(config: JobConfig) -> SnapshotSpec:
    if config.snapshot is None:
        raise ConfigError(
            ["snapshot: required for snapshot-sync (primary_key and fields; see the README's Configuration reference)"]
        )
    return SnapshotSpec.from_section(config.snapshot, config.settings_model())


def run_snapshot(
    config: JobConfig, request: SnapshotRequest, *, validate: bool = True, show_summary: bool = True
) -> SnapshotReport:
    """Runs one snapshot sync; the state is committed only after the pipeline has finished.

    A run that writes the state holds its lock from before it reads the state until it has
    committed; a dry run writes no state and takes no lock.
    """
    spec = spec_for(config)
    file_format = check_input(spec, request.input)
    engine = EngineSpec(
        close_url=request.close_url,
        key_source=request.key_source,
        settings=config.settings_model(),
        budget_share=request.budget_share,
    )
    state = SnapshotState(request.state)
    with contextlib.nullcontext() if request.dry_run else state.lock():
        if validate:
            asyncio.run(engine.check())
        prior = prior_state(state, full=request.full)
        report = _run_locked(config, request, spec, file_format, engine, state, prior)
    if show_summary:
        render(report)
    return report


def prior_state(state: SnapshotState, *, full: bool) -> Generation | None:
    """The live generation, its files checked; with ``full``, a damaged one is passed over (None).

    A generation named by a path that leaves the state directory is refused even with ``full``.
    """
    try:
        prior = state.current()
        if prior is not None:
            state.check(prior)
        return prior
    except StateCorrupt as exc:
        if not full:
            raise
        log.warning("--full: rebuilding the state without the damaged one: %s", exc)
        return None


def _run_locked(
    config: JobConfig,
    request: SnapshotRequest,
    spec: SnapshotSpec,
    file_format: str,
    engine: EngineSpec,
    state: SnapshotState,
    prior: Generation | None,
) -> SnapshotReport:
    if prior is not None and prior.manifest.get("primary_key") != list(spec.primary_key) and not request.full:
        raise ValueError(
            f"--state {request.state} was built with primary key {prior.manifest.get('primary_key')}, "
            f"the config says {list(spec.primary_key)}: run once with --full to rebuild it"
        )
    state_pattern = prior.pattern if prior is not None else None
    if prior is not None and prior.manifest.get("primary_key") != list(spec.primary_key):
        state_pattern = None  # --full with a new key: the old fingerprints cannot be matched
    generation = None
    if request.dry_run:
        out_dir = request.plan_dir or tempfile.mkdtemp(prefix="close-sync-plan-")
    else:
        generation = state.new_generation()
        out_dir = generation.path
    job = config.options()
    runner_options = beam_options(request.beam_args, streaming=False)
    shape = SnapshotShape(
        spec=spec,
        input=request.input,
        file_format=file_format,
        state_pattern=state_pattern,
        out_dir=out_dir,
        engine=engine,
        options=job,
        shards=job.shards(local=is_direct(runner_options)),
        full=request.full,
        dry_run=request.dry_run,
        dead_letter_dir=request.dead_letter_dir,
        sample_size=request.sample_size,
        buckets=request.buckets,
    )
    try:
        result = start(runner_options, False, lambda p: build(p, shape))
        result.wait_until_finish()
    except StateCorrupt as exc:
        # Beam re-raises a worker's exception with the step appended; the file and the fix are enough.
        raise StateCorrupt(str(exc).split(" [while running", 1)[0]) from None
    counts = summary.collect(result)
    report = SnapshotReport(
        counts=counts,
        gone_sample=_read_sample(f"{out_dir.rstrip('/')}/{GONE_SAMPLE}"),
        change_sample=_read_sample(f"{out_dir.rstrip('/')}/{CHANGE_SAMPLE}"),
        generation=generation.name if generation else None,
        plan_dir=out_dir if request.dry_run else None,
    )
    if generation is not None:
        state.commit(
            generation,
            {
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "input": request.input,
                "primary_key": list(spec.primary_key),
                "spec_digest": spec.digest,
                "full": request.full,
                "counts": {k: v for k, v in counts.items() if k.startswith("snapshot_")},
            },
            previous=prior,
        )
    return report


def _read_sample(path: str) -> list[str]:
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as fh:
        text = fh.read().decode("utf-8").strip()
    return json.loads(text) if text else []


def render(report: SnapshotReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="close-sync snapshot-sync summary")
    table.add_column("stage")
    table.add_column("measure")
    table.add_column("count", justify="right")
    rows: list[tuple[str, str, int]] = [("snapshot", "rows read", report.count(ROWS_READ))]
    for kind in ("new", "changed", "resync", "unchanged", "gone", "duplicate"):
        rows.append(("diff", kind, report.count(DIFF_PREFIX + kind)))
    rows.append(("diff", "unusable rows (dead-lettered)", report.count(ROWS_INVALID)))
    rows.append(("requests", "sent to the engine", report.count(m.REQUESTS_SENT)))
    for kind in ("created", "updated", "unchanged", "skipped", "failed"):
        rows.append(("outcomes", kind, report.count(m.OUTCOME_PREFIX + kind)))
    rows.append(("Close API", "calls total", report.calls))
    rows.append(("Close API", "429 responses", report.count(m.API_429)))
    rows.append(("state", "fingerprints written", report.count(STATE_ROWS)))
    for stage, label, value in rows:
        table.add_row(stage, label, f"{value:,}")
    if report.generation:
        table.caption = f"state generation {report.generation} committed"
    elif report.plan_dir:
        table.caption = f"dry run: nothing written to Close or the state; plan in {report.plan_dir}"
    console.print(table)
    if report.gone_sample:
        console.print(
            f"{report.count(DIFF_PREFIX + 'gone'):,} row(s) disappeared from the snapshot (not deleted from Close); "
            f"sample: {', '.join(report.gone_sample)}"
        )
    if report.change_sample and report.plan_dir:
        console.print(f"would change, sample: {', '.join(report.change_sample)}")
