"""Builds the job's graph, top to bottom: read → parse → map → collapse → upsert → outcomes / dead letters.

Bounded input drops redeliveries, maps and collapses in one per-person pass (`transforms.per_person`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam

from closecrm.wiring import EngineSpec
from pipeline.config import JobOptions
from pipeline.kafka_commit import CommitWhenSettled
from pipeline.sources import ReadEvents, SourceOptions, kafka_consumer_config
from transforms.collapse import SUPPRESSED, CollapsePerPerson, SuppressIdentical
from transforms.deadletter import DEAD, AppendLines, WriteDeadLetters
from transforms.kafka_tally import TALLY, ended, from_letter_line
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.ledger import LEDGER, SettleLedger
from transforms.mapping import MapToUpserts
from transforms.outcomes import SettleSuppressed, audit_line
from transforms.parse import ParseEvents
from transforms.per_person import PENDING, PerPerson
from transforms.writer import UpsertToClose


@dataclass(frozen=True)
class JobShape:
    """One run of the event job: where events come from and go, and the config's options (no secrets)."""

    source: SourceOptions
    engine: EngineSpec
    options: JobOptions
    shards: int  # writer keys on this run's runner (JobOptions.shards)
    fold_processes: int  # worker processes beside the job's for the bounded per-person fold (JobOptions.folders)
    streaming: bool
    dry_run: bool
    dead_letter_dir: str | None
    dead_letter_topic: str | None
    audit_log: str | None
    run_id: str  # names this run's dead-letter file, and stamps its letters and audit lines


def request_ended(entry: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """A request's ledger entry, for the commit stage: a dead one ends when its letter is appended."""
    if entry[1] != LEDGER_DEAD:
        yield ended(entry[0])


def audited_ended(line: str) -> Iterator[tuple[str, str]]:
    """An appended audit line of a suppressed request: one request of each of its events ended."""
    for event_id in json.loads(line).get("event_ids") or ():
        yield ended(event_id)


def commits_when_settled(shape: JobShape) -> bool:
    """A streaming Kafka run on a runner that finalizes in memory commits offsets from the job's
    outcomes (`pipeline.kafka_commit`), not on the read's bundle finalization."""
    source = shape.source
    return shape.streaming and source.source == "kafka" and source.kafka_commit == "settled"


def build(p: beam.Pipeline, shape: JobShape) -> dict[str, beam.PCollection]:
    options = shape.options
    tally = commits_when_settled(shape)
    raw = p | "ReadEvents" >> ReadEvents(shape.source)
    by_user_id = bool(shape.engine.settings.contact_custom_field_id_for_user_id)
    if shape.streaming:
        parsed = raw | "ParseEvents" >> ParseEvents(
            max_bytes=options.max_event_bytes,
            dedupe_ttl_seconds=options.dedupe_seconds,
            tally=tally,
        )
        tallies = [*parsed[TALLY]]
        mapped = parsed["events"] | "MapToUpserts" >> MapToUpserts(options.mappings, tally=tally)
        pending = mapped.requests | "CollapsePerPerson" >> CollapsePerPerson(
            shape.streaming,
            options.window_kind,
            options.window_seconds,
            tally=tally,
            by_user_id=by_user_id,
        )
        tallies.append(mapped[TALLY])
        if tally:
            pending, merges = pending
            tallies.append(merges)
        ledgers = [parsed[LEDGER], mapped[LEDGER]]
        deads = [parsed[DEAD], mapped[DEAD]]
    else:
        # Bounded input: parse, redelivery drop, map and collapse in one shuffle by person.
        folded = raw | "PerPerson" >> PerPerson(
            options.mappings,
            max_bytes=options.max_event_bytes,
            dedupe=options.dedupe_seconds is not None,
            by_user_id=by_user_id,
            processes=shape.fold_processes,
        )
        tallies = []
        pending = folded[PENDING]
        ledgers = list(folded[LEDGER])
        deads = list(folded[DEAD])
    outcomes = []
    # Bounded input has collapsed each person's whole input already, which merges identical requests
    # (they share a collapse key); and a keyed stage there sees a person's requests in no set order, so
    # "the last one let through" would not be the previous one in time.
    if shape.streaming and not shape.dry_run:
        gated = pending | "SuppressIdentical" >> SuppressIdentical()
        pending = gated.pending
        settled = gated[SUPPRESSED] | "SettleSuppressed" >> SettleSuppressed()
        outcomes.append(settled.outcomes)
        suppressed_ended = settled[LEDGER] | "SuppressedEnded" >> beam.FlatMap(request_ended)
        if shape.audit_log:  # no Close write behind these: appended as they come, synced per bundle
            audited = (
                settled.outcomes
                | "AuditLines" >> beam.Map(audit_line, run_id=shape.run_id, dry_run=shape.dry_run)
                | "AuditAppend" >> beam.ParDo(AppendLines(shape.audit_log, shape.run_id, sync=False))
            )
            if tally:  # their records are settled once their audit lines are appended
                suppressed_ended = audited | "AuditedEnded" >> beam.FlatMap(audited_ended)
        ledgers.append(settled[LEDGER])
        deads.append(settled[DEAD])
        if tally:
            tallies.append(suppressed_ended)
    applied = pending | "UpsertToClose" >> UpsertToClose(
        shape.engine,
        shards=shape.shards,
        batch_size=options.batch_size,
        flush_seconds=options.flush_seconds,
        streaming=shape.streaming,
        dry_run=shape.dry_run,
        run_id=shape.run_id,
        audit_log=shape.audit_log,  # the writer appends each line as its write happens
    )
    outcomes.append(applied.outcomes)
    ledgers.append(applied[LEDGER])
    deads.append(applied[DEAD])
    if tally:  # the writer appends a request's audit line before it hands on its outcome
        tallies.append(applied[LEDGER] | "WrittenEnded" >> beam.FlatMap(request_ended))

    all_outcomes = outcomes | "AllOutcomes" >> beam.Flatten()
    dead = deads | "AllDeadLetters" >> beam.Flatten()
    if shape.streaming:
        ledgers = [
            lg | f"LedgerWindow{i}" >> beam.WindowInto(beam.window.GlobalWindows())
            for i, lg in enumerate(ledgers)
        ]
    # Bounded input: every stage is in the global window already (CollapsePerPerson uses it in batch).
    settled_ledger = tuple(ledgers) | "SettleLedger" >> SettleLedger(shape.streaming)
    # Each stage's letters are appended where they are made, not after the flatten (WriteDeadLetters).
    dead_lines = tuple(deads) | "WriteDeadLetters" >> WriteDeadLetters(
        shape.dead_letter_dir, shape.dead_letter_topic, shape.streaming, run_id=shape.run_id
    )
    if tally:
        # A dead letter settles what it names once it is appended (the lines come back after the append).
        tallies.append(dead_lines | "LettersSettle" >> beam.FlatMap(from_letter_line))
        _ = tuple(tallies) | "CommitWhenSettled" >> CommitWhenSettled(kafka_consumer_config(shape.source))
    return {"outcomes": all_outcomes, "dead": dead, "dead_lines": dead_lines, "ledger": settled_ledger}
