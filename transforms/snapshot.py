"""DiffSnapshot and friends: read a warehouse snapshot, join it with the prior fingerprints, route the changes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from closecrm.events import BadEvent
from closecrm.model import DeadLetter, Outcome
from closecrm.snapshot import (
    ChangeKind,
    Fingerprint,
    SnapshotSpec,
    Values,
    classify,
    fingerprint,
    primary_key_of,
    request_for,
    row_record,
)
from transforms import metrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD

KEEP = "keep"  # tag: (key, fingerprint) that goes into the next state as it was
GONE = "gone"  # tag: keys in the state that the snapshot no longer has

ROWS_READ = "snapshot_rows_read"
DIFF_PREFIX = "snapshot_"  # + new, changed, resync, unchanged, gone, duplicate
ROWS_INVALID = "snapshot_rows_invalid"
STATE_ROWS = "snapshot_state_rows"

STATE_PREFIX = "state"
STATE_SUFFIX = ".parquet"


@dataclass(frozen=True)
class Change:
    """A row that differs from what was last applied for its key (or that --full resends)."""

    key: str
    kind: ChangeKind
    values: Values
    fingerprint: Fingerprint
    previous: Fingerprint | None


def _snapshot_letter(reason: str, event: Any, error: Any = None, key: str | None = None) -> DeadLetter:
    return DeadLetter(
        stage="snapshot", reason=reason, event=event, error=error, event_ids=(f"row:{key}",) if key else ()
    )


# ---------------------------------------------------------------------------- reading


def table_rows(table: Any, columns: Sequence[str]) -> Iterator[Values]:
    """A pyarrow table's rows as value tuples, converted a column at a time (much cheaper than per cell)."""
    return zip(*(table.column(c).to_pylist() for c in columns), strict=True)


class ReadSnapshotRows(beam.PTransform):
    """Files of one table export → value tuples in `columns` order (Parquet read in batches)."""

    def __init__(self, pattern: str, file_format: str, columns: Sequence[str]) -> None:
        super().__init__()
        self._pattern = pattern
        self._format = file_format
        self._columns = tuple(columns)

    def expand(self, pbegin):
        columns = self._columns
        if self._format == "parquet":
            return (
                pbegin
                | "ReadParquet" >> beam.io.ReadFromParquetBatched(self._pattern, columns=list(columns))
                | "Rows" >> beam.FlatMap(table_rows, columns)
            )
        return (
            pbegin
            | "ReadAvro" >> beam.io.ReadFromAvro(self._pattern)
            | "Rows" >> beam.Map(lambda record: tuple(record.get(c) for c in columns))
        )


class ReadFingerprints(beam.PTransform):
    """The prior state's (key, fingerprint) pairs; nothing when there is no prior state."""

    def __init__(self, pattern: str | None) -> None:
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        if self._pattern is None:
            return pbegin | "NoState" >> beam.Create([]).with_output_types(tuple[str, bytes])
        return (
            pbegin
            | "ReadState" >> beam.io.ReadFromParquetBatched(self._pattern, columns=["key", "fingerprint"])
            | "Pairs" >> beam.FlatMap(table_rows, ("key", "fingerprint")).with_output_types(tuple[str, bytes])
        )


# ---------------------------------------------------------------------------- diff


class _KeyRows(beam.DoFn):
    """Value tuple → (key, (fingerprint, values)); a row without a whole key is dead-lettered."""

    def __init__(self, spec: SnapshotSpec) -> None:
        self._spec = spec

    def setup(self) -> None:
        self._digest = self._spec.digest
        self._width = len(self._spec.primary_key)
        self._read = metrics.counter(ROWS_READ)
        self._invalid = metrics.counter(ROWS_INVALID)

    def process(self, values: Values):
        self._read.inc()
        key = primary_key_of(values, self._width)
        if key is None:
            self._invalid.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD, _snapshot_letter("null_primary_key", row_record(self._spec, values))
            )
            return
        yield key, (fingerprint(self._digest, values), values)


class _Classify(beam.DoFn):
    """One key's snapshot rows and prior fingerprint → a Change, a KEEP, a GONE or dead letters."""

    def __init__(self, spec: SnapshotSpec, full: bool) -> None:
        self._spec = spec
        self._full = full

    def setup(self) -> None:
        self._counters = {
            kind: metrics.counter(DIFF_PREFIX + kind)
            for kind in ("new", "changed", "resync", "unchanged", "gone", "duplicate")
        }
        self._invalid = metrics.counter(ROWS_INVALID)

    def process(self, item: tuple[str, dict[str, Iterable[Any]]]):
        key, grouped = item
        rows = list(grouped["snapshot"])
        old = list(grouped["state"])
        kind = classify([fp for fp, _ in rows], old, full=self._full)
        self._counters[kind].inc()
        previous = old[0] if old else None
        if kind == "unchanged":
            yield beam.pvalue.TaggedOutput(KEEP, (key, previous))
        elif kind == "gone":
            yield beam.pvalue.TaggedOutput(GONE, key)
        elif kind == "duplicate":
            self._invalid.inc(len(rows))
            for _, values in rows:
                letter = _snapshot_letter(
                    "duplicate_primary_key",
                    row_record(self._spec, values),
                    f"{len(rows)} rows share this key",
                    key,
                )
                yield beam.pvalue.TaggedOutput(DEAD, letter)
            if previous is not None:
                yield beam.pvalue.TaggedOutput(KEEP, (key, previous))
        else:
            fp, values = rows[0]
            yield Change(key, kind, values, fp, previous)  # type: ignore[arg-type]


class DiffSnapshot(beam.PTransform):
    """Root transform: read the snapshot and the prior state, CoGroupByKey them by primary key, classify.

    Returns a dict: ``changes`` (Change), ``keep`` ((key, fingerprint) carried as is), ``gone`` (key),
    ``dead`` (DeadLetter for rows without a usable key).
    """

    def __init__(
        self,
        spec: SnapshotSpec,
        pattern: str,
        file_format: str,
        state_pattern: str | None,
        *,
        full: bool = False,
    ) -> None:
        super().__init__()
        self._spec = spec
        self._pattern = pattern
        self._format = file_format
        self._state_pattern = state_pattern
        self._full = full

    def expand(self, pbegin):
        rows = pbegin | "ReadSnapshot" >> ReadSnapshotRows(self._pattern, self._format, self._spec.columns)
        keyed = rows | "KeyByPrimaryKey" >> beam.ParDo(_KeyRows(self._spec)).with_outputs(DEAD, main="keyed")
        state = pbegin | "ReadPriorState" >> ReadFingerprints(self._state_pattern)
        diff = (
            {"snapshot": keyed.keyed, "state": state}
            | "JoinWithState" >> beam.CoGroupByKey()
            | "Classify"
            >> beam.ParDo(_Classify(self._spec, self._full)).with_outputs(KEEP, GONE, DEAD, main="changes")
        )
        dead = (keyed[DEAD], diff[DEAD]) | "DiffDeadLetters" >> beam.Flatten()
        return {"changes": diff.changes, KEEP: diff[KEEP], GONE: diff[GONE], DEAD: dead}


# ---------------------------------------------------------------------------- changes → requests → state


def change_event(spec: SnapshotSpec, change: Change) -> dict[str, Any]:
    """What a change carries through the writer: the row, and both fingerprints for the next state."""
    return {
        "primary_key": change.key,
        "change": change.kind,
        "row": row_record(spec, change.values),
        "fingerprint": change.fingerprint.hex(),
        "previous_fingerprint": change.previous.hex() if change.previous else None,
    }


class _ToPending(beam.DoFn):
    def __init__(self, spec: SnapshotSpec) -> None:
        self._spec = spec

    def setup(self) -> None:
        self._invalid = metrics.counter(ROWS_INVALID)

    def process(self, change: Change):
        event = change_event(self._spec, change)
        try:
            request = request_for(self._spec, change.values, change.key)
        except BadEvent as exc:
            self._invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD, _snapshot_letter(exc.reason, event, exc.detail, change.key))
            if change.previous is not None:
                yield beam.pvalue.TaggedOutput(KEEP, (change.key, change.previous))
            return
        yield Pending(person=change.key, request=request, events=(event,))


class ChangesToRequests(beam.PTransform):
    """Change → Pending for UpsertToClose; a row the action cannot take is dead-lettered and keeps its old state."""

    def __init__(self, spec: SnapshotSpec) -> None:
        super().__init__()
        self._spec = spec

    def expand(self, changes):
        return changes | "ToPending" >> beam.ParDo(_ToPending(self._spec)).with_outputs(
            DEAD, KEEP, main="pending"
        )


def settled_fingerprint(item: tuple[Pending, Outcome]) -> Iterator[tuple[str, bytes]]:
    """Applied (or deliberately skipped) rows take their new fingerprint; failed rows keep the old one."""
    pending, outcome = item
    event = pending.events[0]
    chosen = event["previous_fingerprint"] if outcome.kind == "failed" else event["fingerprint"]
    if chosen:
        yield event["primary_key"], bytes.fromhex(chosen)


def _state_table(batch: list[tuple[str, bytes]]) -> Any:
    import pyarrow as pa

    keys, fps = zip(*batch, strict=True) if batch else ((), ())
    return pa.table({"key": pa.array(keys, pa.string()), "fingerprint": pa.array(fps, pa.binary())})


def state_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("fingerprint", pa.binary())])


class _CountState(beam.DoFn):
    def setup(self) -> None:
        self._rows = metrics.counter(STATE_ROWS)

    def process(self, table: Any):
        self._rows.inc(table.num_rows)
        yield table


class WriteFingerprints(beam.PTransform):
    """(key, fingerprint) pairs → Parquet files ``DIR/state-*.parquet``, finalised by the sink at the end."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._directory = directory

    def expand(self, pairs):
        return (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=10_000, max_batch_size=200_000)
            | "ToTable" >> beam.Map(_state_table)
            | "Count" >> beam.ParDo(_CountState())
            | "Write"
            >> beam.io.WriteToParquetBatched(
                self._directory.rstrip("/") + "/" + STATE_PREFIX,
                schema=state_schema(),
                file_name_suffix=STATE_SUFFIX,
            )
        )


class WriteSample(beam.PTransform):
    """Up to ``n`` elements as one JSON list at ``PATH`` (for the report the driver prints)."""

    def __init__(self, path: str, n: int = 20) -> None:
        super().__init__()
        self._path = path
        self._n = n

    def expand(self, pcoll):
        return (
            pcoll
            | "Sample" >> beam.combiners.Sample.FixedSizeGlobally(self._n)
            | "Json" >> beam.Map(lambda xs: json.dumps(sorted(xs, key=str), default=str))
            | "Write" >> beam.io.WriteToText(self._path, shard_name_template="", num_shards=1)
        )
