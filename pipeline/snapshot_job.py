"""`close-sync snapshot-sync`: check the input's schema (an export's files or a warehouse table or query), diff it against the last state, upsert the changes, commit the state."""

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

from closecrm.model import new_run_id
from closecrm.reverse_etl.snapshot import (
    SchemaDrift,
    SnapshotSpec,
    arrow_kind,
    avro_kind,
    check_schema,
    kind_changes,
)
from closecrm.reverse_etl.warehouse import SINCE_KINDS, ReadPlan, WarehouseError, WarehouseSource, Watermark
from closecrm.wiring import DEFAULT_BUDGET_SHARE, DEFAULT_CLOSE_URL, EngineSpec, KeySource
from pipeline import summary
from pipeline.config import ConfigError, JobConfig, JobOptions
from pipeline.runjob import beam_options, start, stopped_by_recording
from pipeline.runners import is_direct
from pipeline.snapshot_state import Generation, SnapshotState, StateCorrupt
from pipeline.state_location import announce, ledger_location, runs_on_this_machine
from transforms import metrics as m
from transforms.deadletter import DEAD, WriteDeadLetters
from transforms.objects import BEAM_OBJECTS
from transforms.snapshot import (
    DEFAULT_BUCKETS,
    DIFF_KINDS,
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
from transforms.warehouse import reader_for
from transforms.writer import UpsertToClose

FORMATS = {".parquet": "parquet", ".parq": "parquet", ".avro": "avro"}
GONE_SAMPLE = "_gone_sample.json"
CHANGE_SAMPLE = "_change_sample.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRequest:
    """What `close-sync snapshot-sync` was asked to do: read files (``input``) or a warehouse (``source``)."""

    input: str | None
    state: str
    full: bool = False
    dry_run: bool = False
    close_url: str = DEFAULT_CLOSE_URL
    key_source: KeySource = KeySource()
    dead_letter_dir: str | None = None
    plan_dir: str | None = None  # where --dry-run writes its plan (default: a new local temp dir)
    budget_share: float = DEFAULT_BUDGET_SHARE
    sample_size: int = 20
    buckets: int = DEFAULT_BUCKETS  # hash buckets of the primary key the diff joins in
    beam_args: tuple[str, ...] = field(default_factory=tuple)
    source: WarehouseSource | None = None  # --from URL with --table or --query, instead of --input
    # --state-location: where the created-id ledger lives (pipeline/state_location.py), shared with
    # `run` and `replay`; None: the default place. Not --state, which holds this table's fingerprints.
    state_location: str | None = None
    remember_created_ids: bool = True
    # Names this run's dead-letter file, so a run never overwrites an earlier one's.
    run_id: str = field(default_factory=new_run_id)


@dataclass(frozen=True)
class SnapshotReport:
    """How a run ended: Beam counters, samples of gone and changed keys, and where things were written."""

    counts: dict[str, int]
    gone_sample: list[str]
    change_sample: list[str]
    generation: str | None  # the state generation committed (None for dry runs)
    plan_dir: str | None
    source: str | None = None  # what was read, as it may be printed (a warehouse URL is masked)
    since: str | None = None  # the high-water mark rows were read from (incremental reads)

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


def check_input(spec: SnapshotSpec, pattern: str) -> tuple[str, dict[str, str]]:
    """Every matched file's schema against the spec; raises `SchemaDrift` before anything is written.

    Returns the format and the mapped columns' kinds (those every file agrees on), for the state.
    """
    file_format, files = input_files(pattern)
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    for path in files:
        kinds = column_kinds(path, file_format)
        problems.extend(check_schema(spec, kinds, path))
        for column in spec.columns:
            if column in kinds:
                seen.setdefault(column, set()).add(kinds[column])
    if problems:
        raise SchemaDrift(problems)
    return file_format, {column: kinds.pop() for column, kinds in seen.items() if len(kinds) == 1}


@dataclass(frozen=True)
class WarehouseInput:
    """A warehouse source after its checks on the launcher: the columns' kinds and how to read them."""

    source: WarehouseSource
    kinds: dict[str, str]  # mapped columns (and the since-column) -> kind
    as_text: frozenset[str]


def check_warehouse(spec: SnapshotSpec, source: WarehouseSource) -> WarehouseInput:
    """Connect, read the schema (no rows) and check it against the spec; raises `WarehouseError` or
    `SchemaDrift` (one line each, password never in it) before the state is touched."""
    from closecrm.reverse_etl.warehouse import probe

    found = probe(source)
    label = f"--table {source.table}" if source.table is not None else "--query"
    problems = check_schema(spec, found.kinds, label)
    if source.since_column:
        kind = found.kinds.get(source.since_column)
        if kind is None:
            problems.append(f"{label}: the --since-column {source.since_column!r} is missing")
        elif kind not in SINCE_KINDS:
            problems.append(
                f"{label}: the --since-column {source.since_column!r} is {kind}; it must be one of "
                f"{', '.join(sorted(SINCE_KINDS))} (a time the row last changed, or a growing number)"
            )
    if problems:
        raise SchemaDrift(problems)
    wanted = set(spec.columns) | ({source.since_column} if source.since_column else set())
    kinds = {c: k for c, k in found.kinds.items() if c in wanted}
    return WarehouseInput(source, kinds, found.as_text & set(spec.columns))


def warehouse_source(
    config: JobConfig,
    *,
    input_glob: str | None = None,
    url: str | None = None,
    table: str | None = None,
    query: str | None = None,
    since_column: str | None = None,
    password_env: str | None = None,
    password_file: str | None = None,
) -> WarehouseSource | None:
    """The warehouse to read, from the command line over the config's ``snapshot.source``; None: files.

    ``--input`` reads files and takes none of the warehouse flags. Otherwise the URL is ``--from`` or
    the config's; ``--table``/``--query`` replace the config's pair; the password is read from
    ``--password-file``, else the variable ``--password-env`` names, else the config's choices, else
    the dialect's own variable ($PGPASSWORD).
    """
    from closecrm.reverse_etl.warehouse_url import PasswordSource, WarehouseURL

    flags = {"--from": url, "--table": table, "--query": query, "--since-column": since_column}
    if input_glob is not None:
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise ValueError(
                f"--input reads files; {', '.join(given)} belong to --from: give one or the other"
            )
        return None
    configured = config.snapshot.source if config.snapshot is not None else None
    url = url or (configured.url if configured else None)
    if url is None:
        raise ValueError(
            "nothing to read: give --input GLOB, or --from URL with --table NAME or --query SQL "
            "(or snapshot.source in the config)"
        )
    if table is not None and query is not None:
        raise ValueError("give --table NAME or --query SQL, not both")
    if table is None and query is None and configured is not None:
        table, query = configured.table, configured.query
    if table is None and query is None:
        raise ValueError("--from needs --table NAME or --query SQL (or snapshot.source.table/query)")
    parsed = WarehouseURL.parse(url, where="--from" if flags["--from"] else "snapshot.source.url")
    password_file = password_file or (configured.password_file if configured else None)
    env = password_env or (configured.password_env if configured else None) or parsed.default_password_env()
    return WarehouseSource(
        url=parsed,
        table=table,
        query=query,
        since_column=since_column or (configured.since_column if configured else None),
        password=PasswordSource(env_var=None if password_file else env, path=password_file, objects=BEAM_OBJECTS),
    )


# ---------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class SnapshotShape:
    """One snapshot run's graph: the table, the state, the config's options (no secrets)."""

    spec: SnapshotSpec
    input: str | None  # files; or
    file_format: str | None
    read: ReadPlan | None  # a warehouse read
    partial: bool  # the read returns only rows from a high-water mark on: unread keys keep their state
    state_pattern: str | None
    out_dir: str  # the new state generation, or the dry-run plan
    engine: EngineSpec
    options: JobOptions
    shards: int  # writer keys on this run's runner (JobOptions.shards)
    full: bool
    dry_run: bool
    dead_letter_dir: str | None
    run_id: str
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
        reader=reader_for(shape.read) if shape.read is not None else None,
        partial=shape.partial,
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
            in_event_time=False,  # rows carry no event time: flush as they come, never hold them all
            run_id=shape.run_id,  # a dead letter that cannot be appended stops this run's writes
        )
        deads.append(applied[DEAD])
        settled.append(applied.outcomes | "SettledFingerprints" >> beam.FlatMap(settled_fingerprint))
        settled_tables = settled | "SettledPairs" >> beam.Flatten() | "SettledTables" >> FingerprintTables()
        _ = (
            (diff[KEEP], settled_tables)
            | "NextState" >> beam.Flatten()
            | "WriteState" >> WriteFingerprints(out)
        )
    if shape.dead_letter_dir:  # each stage's letters appended where they are made
        _ = tuple(deads) | "WriteDeadLetters" >> WriteDeadLetters(shape.dead_letter_dir, run_id=shape.run_id)


# ---------------------------------------------------------------------------- run


def spec_for(config: JobConfig) -> SnapshotSpec:
    if config.snapshot is None:
        raise ConfigError(
            [
                "snapshot: required for snapshot-sync (primary_key and fields; see the README's Configuration reference)"
            ]
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
    if (request.source is None) == (request.input is None):
        raise ValueError("give --input GLOB or --from URL (with --table or --query), not both")
    # Before the input, the warehouse or Close is touched; a dry run sends nothing, so keeps no ledger.
    ledger = ledger_location(
        request.state_location,
        request.close_url,
        on_this_machine=runs_on_this_machine(beam_options(request.beam_args, streaming=False)),
        enabled=request.remember_created_ids and not request.dry_run,
    )
    warehouse = file_format = None
    if request.source is not None:
        warehouse = check_warehouse(spec, request.source)
        kinds = warehouse.kinds
    else:
        file_format, kinds = check_input(spec, request.input)  # type: ignore[arg-type]
    engine = EngineSpec(
        close_url=request.close_url,
        key_source=request.key_source,
        settings=config.settings_model(),
        budget_share=request.budget_share,
        created_ids=ledger,
        objects=BEAM_OBJECTS,
    )
    state = SnapshotState(request.state)
    with contextlib.nullcontext() if request.dry_run else state.lock():
        prior = prior_state(state, full=request.full)
        check_prior(request, spec, kinds, prior)
        if validate:
            asyncio.run(engine.check())
        if not request.dry_run:
            announce(ledger)  # once the checks that end a run in one line have passed
        report = _run_locked(
            config, request, spec, _Input(file_format, warehouse, kinds), engine, state, prior
        )
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


@dataclass(frozen=True)
class _Input:
    file_format: str | None
    warehouse: WarehouseInput | None
    kinds: dict[str, str]


class KindChanged(ValueError):
    """A mapped column's type differs from the previous run's; --full resends with the new type."""


def _incremental(
    request: SnapshotRequest, spec: SnapshotSpec, warehouse: WarehouseInput, prior: Generation | None
) -> tuple[Watermark | None, Watermark | None]:
    """(the mark to read from, the mark this run reaches), both None without --since-column.

    The previous run's mark holds only for the same source, column and mapping, and not with --full:
    otherwise the whole table is read (and a changed mapping resends every row, as for files).
    """
    from closecrm.reverse_etl.warehouse import high_water_mark

    source = warehouse.source
    if not source.since_column:
        return None, None
    reached = high_water_mark(source, warehouse.kinds[source.since_column])
    previous = prior.manifest.get("source") if prior is not None else None
    if request.full or not isinstance(previous, dict) or prior is None:
        return None, reached
    same = all(previous.get(k) == v for k, v in source.identity().items())
    if not same or prior.manifest.get("spec_digest") != spec.digest:
        return None, reached
    return Watermark.from_json(previous.get("high_water_mark")), reached


def check_prior(
    request: SnapshotRequest, spec: SnapshotSpec, kinds: dict[str, str], prior: Generation | None
) -> None:
    """What the previous run's state rules out before anything is sent: a changed primary key or a
    mapped column of another type (both need --full)."""
    if prior is not None and prior.manifest.get("primary_key") != list(spec.primary_key) and not request.full:
        raise ValueError(
            f"--state {request.state} was built with primary key {prior.manifest.get('primary_key')}, "
            f"the config says {list(spec.primary_key)}: run once with --full to rebuild it"
        )
    before = prior.manifest.get("column_kinds") if prior is not None else None
    changed = kind_changes(spec, before, kinds) if isinstance(before, dict) else []
    if changed and not request.full:
        raise KindChanged(
            "; ".join(changed) + ": every row's fingerprint would change; run once with --full to resend "
            "every row with the new types (nothing was written)"
        )


def _run_locked(
    config: JobConfig,
    request: SnapshotRequest,
    spec: SnapshotSpec,
    found: _Input,
    engine: EngineSpec,
    state: SnapshotState,
    prior: Generation | None,
) -> SnapshotReport:
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
    since = reached = plan = None
    if found.warehouse is not None:
        since, reached = _incremental(request, spec, found.warehouse, prior)
        plan = ReadPlan(
            source=found.warehouse.source,
            columns=spec.columns,
            key_width=len(spec.primary_key),
            slices=1 if found.warehouse.source.dialect == "bigquery" else job.snapshot_slices,
            batch_rows=job.snapshot_batch_rows,
            as_text=found.warehouse.as_text,
            since=since,
        )
        log.info("reading %s%s", found.warehouse.source.describe(), f" from {since.value} on" if since else "")
    runner_options = beam_options(request.beam_args, streaming=False)
    shape = SnapshotShape(
        spec=spec,
        input=request.input,
        file_format=found.file_format,
        read=plan,
        partial=since is not None,
        state_pattern=state_pattern,
        out_dir=out_dir,
        engine=engine,
        options=job,
        shards=job.shards(local=is_direct(runner_options)),
        full=request.full,
        dry_run=request.dry_run,
        dead_letter_dir=request.dead_letter_dir,
        run_id=request.run_id,
        sample_size=request.sample_size,
        buckets=request.buckets,
    )
    try:
        with stopped_by_recording(request.run_id):
            result = start(runner_options, False, lambda p: build(p, shape))
            result.wait_until_finish()
    except (StateCorrupt, WarehouseError) as exc:
        # Beam re-raises a worker's exception with the step appended; the file and the fix are enough.
        raise type(exc)(str(exc).split(" [while running", 1)[0]) from None
    counts = summary.collect(result)
    report = SnapshotReport(
        counts=counts,
        gone_sample=_read_sample(f"{out_dir.rstrip('/')}/{GONE_SAMPLE}"),
        change_sample=_read_sample(f"{out_dir.rstrip('/')}/{CHANGE_SAMPLE}"),
        generation=generation.name if generation else None,
        plan_dir=out_dir if request.dry_run else None,
        source=request.input if found.warehouse is None else found.warehouse.source.describe(),
        since=since.value if since else None,
    )
    if generation is not None:
        manifest: dict[str, Any] = {
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "input": report.source,
            "primary_key": list(spec.primary_key),
            "spec_digest": spec.digest,
            "full": request.full,
            "counts": {k: v for k, v in counts.items() if k.startswith("snapshot_")},
            "column_kinds": {c: k for c, k in found.kinds.items() if c in spec.columns},
        }
        if found.warehouse is not None:
            # A run with failures keeps the mark it read from, so the next run reads the failed rows again.
            mark = since if report.failed else (reached or since)
            manifest["source"] = {
                **found.warehouse.source.identity(),
                "high_water_mark": mark.to_json() if mark else None,
            }
        state.commit(generation, manifest, previous=prior)
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
    for kind in DIFF_KINDS:
        if kind != "unread" or report.since is not None:
            label = "not read (older than the mark)" if kind == "unread" else kind
            rows.append(("diff", label, report.count(DIFF_PREFIX + kind)))
    rows.append(("diff", "unusable rows (dead-lettered)", report.count(ROWS_INVALID)))
    rows.append(("requests", "sent to the engine", report.count(m.REQUESTS_SENT)))
    for kind in ("created", "updated", "unchanged", "skipped", "failed"):
        rows.append(("outcomes", kind, report.count(m.OUTCOME_PREFIX + kind)))
    rows.append(("Close API", "calls total", report.calls))
    rows.append(("Close API", "429 responses", report.count(m.API_429)))
    rows.append(("state", "fingerprints written", report.count(STATE_ROWS)))
    for stage, label, value in rows:
        table.add_row(stage, label, f"{value:,}")
    if report.source:
        since = f", rows at or after {report.since} or NULL" if report.since else ""
        table.title = f"close-sync snapshot-sync summary ({report.source}{since})"
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
