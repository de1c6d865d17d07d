"""DiffSnapshot and friends: read a warehouse snapshot, join it with the prior fingerprints, route the changes.

Per-element Beam overhead is the limit of a per-row join, so the diff moves chunks: each batch of
rows read is keyed (primary key, fingerprint) in one loop and split by a hash bucket of the key; the
state is read and split the same way; CoGroupByKey on the bucket brings one bucket's snapshot chunks
and prior fingerprints to one worker, which joins them with pyarrow (`closecrm.reverse_etl.snapshot.diff_bucket`).
Only new and changed rows become single elements; unchanged fingerprints stay tables to the state sink.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio

from closecrm.events.parse import BadEvent
from closecrm.model import DeadLetter, Outcome
from closecrm.reverse_etl.snapshot import (
    ChangeKind,
    Fingerprint,
    SnapshotSpec,
    Values,
    arrow_values,
    buckets_of,
    diff_bucket,
    fingerprints,
    primary_keys,
    request_for,
    row_record,
)
from transforms import metrics
from transforms.collapse import Pending
from transforms.deadletter import DEAD

KEEP = "keep"  # tag: state entries that go into the next state as they were (tables from the diff, pairs after it)
GONE = "gone"  # tag: keys in the state that the snapshot no longer has

ROWS_READ = "snapshot_rows_read"
STATE_UNREADABLE = "snapshot_state_files_unreadable"
DIFF_PREFIX = "snapshot_"  # + new, changed, resync, unchanged, gone, duplicate, unread
DIFF_KINDS = ("new", "changed", "resync", "unchanged", "gone", "duplicate", "unread")
ROWS_INVALID = "snapshot_rows_invalid"
STATE_ROWS = "snapshot_state_rows"

STATE_PREFIX = "state"
STATE_SUFFIX = ".parquet"

DEFAULT_BUCKETS = 128  # hash buckets of the primary key: the unit the join moves and holds in memory
AVRO_BATCH_ROWS = 50_000
STATE_ROW_GROUP_ROWS = 100_000


REBUILD = "re-run with --full to rebuild the state without it"


class StateError(RuntimeError):
    """The --state directory cannot be used as it is; the message names the file and what to do."""


class StateCorrupt(StateError):
    """A state file that cannot be read; `--full` rebuilds the state without reading it."""


def unreadable(path: str, problem: Any) -> str:
    """One line for a damaged state file: which file, what is wrong (first line only), and the way out."""
    text = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    if len(text) > 160:
        text = text[:157] + "..."
    return f"state file {path} is damaged ({text}): {REBUILD}"


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


class ReadSnapshotBatches(beam.PTransform):
    """Files of one table export → batches of rows: pyarrow Tables (Parquet row groups) or lists of value tuples (Avro)."""

    def __init__(self, pattern: str, file_format: str, columns: Sequence[str]) -> None:
        super().__init__()
        self._pattern = pattern
        self._format = file_format
        self._columns = tuple(columns)

    def expand(self, pbegin):
        if self._format == "parquet":
            return pbegin | "ReadParquet" >> beam.io.ReadFromParquetBatched(
                self._pattern, columns=list(self._columns)
            )
        return (
            pbegin
            | "MatchAvro" >> fileio.MatchFiles(self._pattern)
            | "OpenAvro" >> fileio.ReadMatches()
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAvro" >> beam.ParDo(_ReadAvroBatches(self._columns))
        )


class _ReadAvroBatches(beam.DoFn):
    """One Avro file → lists of up to AVRO_BATCH_ROWS value tuples."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self._columns = columns

    def process(self, readable: Any) -> Iterator[list[Values]]:
        import fastavro

        columns = self._columns
        with readable.open() as fh:
            batch: list[Values] = []
            for record in fastavro.reader(fh):
                batch.append(tuple(record.get(c) for c in columns))
                if len(batch) >= AVRO_BATCH_ROWS:
                    yield batch
                    batch = []
            if batch:
                yield batch


@dataclass(frozen=True)
class RowChunk:
    """Snapshot rows of one bucket from one read batch, columnar: keys, fingerprints and the mapped values."""

    keys: Any  # pyarrow string array
    fingerprints: Any  # pyarrow binary array
    values: Any  # pyarrow Table in `SnapshotSpec.columns` order (Parquet) or a list of value tuples (Avro)

    def __len__(self) -> int:
        return len(self.keys)

    def row(self, i: int) -> Values:
        if isinstance(self.values, list):
            return self.values[i]
        return tuple(arrow_values(column.slice(i, 1))[0] for column in self.values.columns)


def _split_by_bucket(keys: Sequence[str], buckets: int) -> Iterator[tuple[int, Any]]:
    """(bucket, row numbers as a pyarrow array) for every bucket the keys fall into."""
    import numpy as np
    import pyarrow as pa

    ids = np.fromiter(buckets_of(keys, buckets), dtype=np.int32, count=len(keys))
    order = np.argsort(ids, kind="stable")
    bounds = np.cumsum(np.bincount(ids, minlength=buckets))
    start = 0
    for bucket, end in enumerate(bounds.tolist()):
        if end > start:
            yield bucket, pa.array(order[start:end], pa.int64())
        start = end


class BucketRows(beam.DoFn):
    """A batch of rows → (bucket, RowChunk) per hash bucket of the primary key; rows without a whole key are dead-lettered."""

    def __init__(self, spec: SnapshotSpec, buckets: int) -> None:
        self._spec = spec
        self._buckets = buckets

    def setup(self) -> None:
        self._digest = self._spec.digest
        self._width = len(self._spec.primary_key)
        self._read = metrics.counter(ROWS_READ)
        self._invalid = metrics.counter(ROWS_INVALID)

    def process(self, batch: Any):
        import pyarrow as pa

        columns_names = self._spec.columns
        if isinstance(batch, list):
            columns = list(zip(*batch, strict=True)) if batch else [() for _ in columns_names]
            values: Any = batch
        else:
            values = batch.select(list(columns_names))
            columns = [arrow_values(column) for column in values.columns]
        n = len(columns[0])
        self._read.inc(n)
        keys = primary_keys(columns, self._width)
        fps = fingerprints(self._digest, zip(*columns, strict=True))
        if None in keys:
            usable = [i for i, key in enumerate(keys) if key is not None]
            self._invalid.inc(n - len(usable))
            for i in sorted(set(range(n)) - set(usable)):
                row = tuple(column[i] for column in columns)
                letter = _snapshot_letter("null_primary_key", row_record(self._spec, row))
                yield beam.pvalue.TaggedOutput(DEAD, letter)
            keys = [keys[i] for i in usable]
            fps = [fps[i] for i in usable]
            # Typed indices: a batch whose every key is null leaves none, and take() has no kernel for
            # the null-typed array an empty list becomes.
            values = [batch[i] for i in usable] if isinstance(batch, list) else values.take(pa.array(usable, pa.int64()))
        key_array, fp_array = pa.array(keys, pa.string()), pa.array(fps, pa.binary())
        for bucket, rows in _split_by_bucket(keys, self._buckets):
            if isinstance(values, list):
                chunk_values: Any = [values[i] for i in rows.to_pylist()]
            else:
                chunk_values = values.take(rows)
            yield bucket, RowChunk(key_array.take(rows), fp_array.take(rows), chunk_values)


class ReadFingerprints(beam.PTransform):
    """The prior state as (bucket, pyarrow Table of key and fingerprint); nothing when there is no prior state.

    A state file that cannot be read fails the run with an error naming it, unless ``tolerant``
    (``--full``, which resends every row anyway): then the file's unread rows are skipped and counted.
    """

    def __init__(self, pattern: str | None, buckets: int, *, tolerant: bool = False) -> None:
        super().__init__()
        self._pattern = pattern
        self._buckets = buckets
        self._tolerant = tolerant

    def expand(self, pbegin):
        if self._pattern is None:
            return pbegin | "NoState" >> beam.Create([])
        return (
            pbegin
            | "MatchState" >> fileio.MatchFiles(self._pattern)
            | "OpenState" >> fileio.ReadMatches()
            | "SpreadStateFiles" >> beam.Reshuffle()
            | "ReadState" >> beam.ParDo(_ReadStateFile(self._tolerant))
            | "BucketState" >> beam.FlatMap(bucket_state, self._buckets)
        )


class _ReadStateFile(beam.DoFn):
    """One state Parquet file → one table of (key, fingerprint) per row group."""

    def __init__(self, tolerant: bool) -> None:
        self._tolerant = tolerant

    def setup(self) -> None:
        self._unreadable = metrics.counter(STATE_UNREADABLE)

    def process(self, readable: Any) -> Iterator[Any]:
        import pyarrow.parquet as pq

        path = readable.metadata.path
        with readable.open() as fh:
            try:
                parquet = pq.ParquetFile(fh)
                groups = parquet.num_row_groups
            except Exception as exc:  # noqa: BLE001 - any failure to read is a damaged file
                self._damaged(path, exc)
                return
            for group in range(groups):
                try:
                    table = parquet.read_row_group(group, columns=["key", "fingerprint"])
                    table = table.cast(state_schema())
                except Exception as exc:  # noqa: BLE001
                    self._damaged(path, exc)
                    return
                # A null cell is no key (or no fingerprint) this job ever wrote: the file is not ours.
                nulls = [name for name in ("key", "fingerprint") if table.column(name).null_count]
                if nulls:
                    self._damaged(path, f"a null {' and a null '.join(nulls)} in row group {group}")
                    return
                yield table

    def _damaged(self, path: str, exc: Exception) -> None:
        if not self._tolerant:
            raise StateCorrupt(unreadable(path, exc)) from None
        self._unreadable.inc()
        logging.getLogger(__name__).warning("--full: skipping the rest of %s", unreadable(path, exc))


def bucket_state(table: Any, buckets: int) -> Iterator[tuple[int, Any]]:
    """A table of (key, fingerprint) → (bucket, the rows of that bucket)."""
    table = table.cast(state_schema())
    for bucket, rows in _split_by_bucket(table.column("key").to_pylist(), buckets):
        yield bucket, table.take(rows)


# ---------------------------------------------------------------------------- diff


class DiffBucket(beam.DoFn):
    """One bucket's snapshot chunks and prior state → Changes, a KEEP table, GONE keys and dead letters.

    ``partial``: the snapshot is an incremental read, so state keys it lacks are kept, not gone.
    """

    def __init__(self, spec: SnapshotSpec, full: bool, partial: bool = False) -> None:
        self._spec = spec
        self._full = full
        self._partial = partial

    def setup(self) -> None:
        self._counters = {kind: metrics.counter(DIFF_PREFIX + kind) for kind in DIFF_KINDS}
        self._invalid = metrics.counter(ROWS_INVALID)

    def process(self, item: tuple[int, dict[str, Iterable[Any]]]):
        import pyarrow as pa

        _, grouped = item
        chunks: list[RowChunk] = [c for c in grouped["snapshot"] if len(c)]
        state = [t for t in grouped["state"] if t.num_rows]
        keys = _concat([c.keys for c in chunks], pa.string())
        fps = _concat([c.fingerprints for c in chunks], pa.binary())
        old = pa.concat_tables(state) if state else state_schema().empty_table()
        old_keys = old.column("key").combine_chunks()
        old_fps = old.column("fingerprint").combine_chunks()
        diff = diff_bucket(keys, fps, old_keys, old_fps, full=self._full, partial=self._partial)
        for kind, count in diff.counts.items():
            if count:
                self._counters[kind].inc(count)

        starts = list(itertools.accumulate((len(c) for c in chunks), initial=0))

        def row(i: int) -> Values:
            at = bisect.bisect_right(starts, i) - 1
            return chunks[at].row(i - starts[at])

        for i, kind, previous in diff.changes:
            yield Change(keys[i].as_py(), kind, row(i), fps[i].as_py(), previous)
        for key, rows in diff.duplicates.items():
            self._invalid.inc(len(rows))
            for i in rows:
                letter = _snapshot_letter(
                    "duplicate_primary_key",
                    row_record(self._spec, row(i)),
                    f"{len(rows)} rows share this key",
                    key,
                )
                yield beam.pvalue.TaggedOutput(DEAD, letter)
        if len(diff.keep_keys):
            yield beam.pvalue.TaggedOutput(KEEP, _keep_table(diff.keep_keys, diff.keep_fingerprints))
        for key in diff.gone:
            yield beam.pvalue.TaggedOutput(GONE, key)


def _concat(arrays: list[Any], arrow_type: Any) -> Any:
    import pyarrow as pa

    return pa.concat_arrays(arrays) if arrays else pa.array([], arrow_type)


def _keep_table(keys: Any, fps: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_arrays([keys, fps], schema=state_schema())


class DiffSnapshot(beam.PTransform):
    """Root transform: read the snapshot and the prior state in chunks per hash bucket of the primary key,
    CoGroupByKey them by bucket, and join each bucket's keys with its prior fingerprints.

    Returns a dict: ``changes`` (one Change per new, changed or resynced row), ``keep`` (pyarrow Tables of
    key and fingerprint carried into the next state as they were), ``gone`` (key), ``dead`` (DeadLetter for
    rows without a usable key).

    The rows come from files (``pattern`` and ``file_format``) or from ``reader``, any root transform
    that yields batches as `ReadSnapshotBatches` does (pyarrow Tables or lists of value tuples in
    ``spec.columns`` order): the warehouse readers of transforms/warehouse.py. ``partial`` says the
    reader returns only some rows of the table (an incremental read), so unread keys keep their state.
    """

    def __init__(
        self,
        spec: SnapshotSpec,
        pattern: str | None,
        file_format: str | None,
        state_pattern: str | None,
        *,
        full: bool = False,
        buckets: int = DEFAULT_BUCKETS,
        reader: beam.PTransform | None = None,
        partial: bool = False,
    ) -> None:
        super().__init__()
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, not {buckets}")
        if (reader is None) == (pattern is None):
            raise ValueError("give either files (pattern, file_format) or a reader")
        self._spec = spec
        self._pattern = pattern
        self._format = file_format
        self._state_pattern = state_pattern
        self._full = full
        self._buckets = buckets
        self._reader = reader
        self._partial = partial

    def expand(self, pbegin):
        reader = self._reader or ReadSnapshotBatches(self._pattern, self._format, self._spec.columns)
        batches = pbegin | "ReadSnapshot" >> reader
        chunks = batches | "BucketRows" >> beam.ParDo(BucketRows(self._spec, self._buckets)).with_outputs(
            DEAD, main="chunks"
        )
        state = pbegin | "ReadPriorState" >> ReadFingerprints(
            self._state_pattern, self._buckets, tolerant=self._full
        )
        diff = (
            {"snapshot": chunks.chunks, "state": state}
            | "JoinWithStateByBucket" >> beam.CoGroupByKey()
            | "DiffBuckets"
            >> beam.ParDo(DiffBucket(self._spec, self._full, self._partial)).with_outputs(
                KEEP, GONE, DEAD, main="changes"
            )
        )
        dead = (chunks[DEAD], diff[DEAD]) | "DiffDeadLetters" >> beam.Flatten()
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


def state_pairs(table: Any) -> Iterator[tuple[str, bytes]]:
    """A state table's rows as (key, fingerprint) pairs (for tests and small outputs)."""
    return zip(table.column("key").to_pylist(), table.column("fingerprint").to_pylist(), strict=True)


class FingerprintTables(beam.PTransform):
    """(key, fingerprint) pairs → state tables, for the few rows settled one by one (changes, failures)."""

    def expand(self, pairs):
        return (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=1_000, max_batch_size=100_000)
            | "ToTable" >> beam.Map(_state_table)
        )


class _Rebatch(beam.DoFn):
    """Small state tables → tables of at least ``rows`` rows (the last of a bundle may be smaller)."""

    def __init__(self, rows: int) -> None:
        self._rows = rows

    def start_bundle(self) -> None:
        self._tables: list[Any] = []
        self._size = 0

    def process(self, table: Any):
        self._tables.append(table.cast(state_schema()))
        self._size += table.num_rows
        if self._size >= self._rows:
            yield self._flush()

    def finish_bundle(self):
        if self._tables:
            yield beam.transforms.window.GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> Any:
        import pyarrow as pa

        table = pa.concat_tables(self._tables).combine_chunks()
        self._tables, self._size = [], 0
        return table


class _CountState(beam.DoFn):
    def setup(self) -> None:
        self._rows = metrics.counter(STATE_ROWS)

    def process(self, table: Any):
        self._rows.inc(table.num_rows)
        yield table


class WriteFingerprints(beam.PTransform):
    """State tables (key, fingerprint) → Parquet files ``DIR/state-*.parquet``, finalised by the sink at the end."""

    def __init__(self, directory: str, row_group_rows: int = STATE_ROW_GROUP_ROWS) -> None:
        super().__init__()
        self._directory = directory
        self._row_group_rows = row_group_rows

    def expand(self, tables):
        return (
            tables
            | "Rebatch" >> beam.ParDo(_Rebatch(self._row_group_rows))
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

    def __init__(self, path: str, n: int) -> None:
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
