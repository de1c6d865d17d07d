"""Reverse ETL rows as upsert requests: the column mapping, schema checks, primary keys and fingerprints.

A row is a tuple of the mapped columns' values in `SnapshotSpec.columns` order. A row's
fingerprint hashes those raw values together with the spec's digest: equal raw values always
normalise to the same request, and a change of mapping, flags or lookup settings changes every
fingerprint, which resyncs everything.

The diff works on many rows at a time: `primary_keys`, `fingerprints` and `buckets_of` take a
batch of rows, and `diff_bucket` joins one hash bucket of the snapshot's keys with the same
bucket of the state's (pyarrow arrays), so the pipeline moves chunks of rows, not single rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from closecrm.events.mapping import CUSTOM_FIELD_FIELDS, request_from_values
from closecrm.model import Flags, Settings, UpsertRequest

Values = tuple[Any, ...]
Fingerprint = bytes  # 16 bytes
ChangeKind = Literal["new", "changed", "resync"]
# "unread": a key of the state that an incremental read (--since-column) did not read; it keeps its state.
DiffKind = Literal["new", "changed", "resync", "unchanged", "gone", "duplicate", "unread"]

FINGERPRINT_BYTES = 16

# Column kinds (from Parquet or Avro schemas) each target accepts; "null" is a column with no values.
_TEXTUAL = frozenset({"string", "integer", "float", "decimal", "date", "timestamp", "null"})
ACCEPTS: dict[str, frozenset[str]] = {
    "string_field": _TEXTUAL,
    "custom_field": _TEXTUAL | {"boolean", "list"},
    "primary_key": frozenset({"string", "integer", "decimal", "date", "timestamp"}),
}


class SchemaDrift(ValueError):
    """The snapshot's files do not fit the config's `snapshot` section; one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "snapshot input does not match the config's snapshot section (nothing was written):\n"
            + "\n".join(f"  {p}" for p in self.problems)
            + "\n  (fix the input or the config's snapshot section)"
        )


@dataclass(frozen=True)
class SnapshotSpec:
    """The config's `snapshot` section, resolved: which column feeds which action field."""

    primary_key: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)  # string action field -> column
    custom_fields: dict[str, dict[str, str]] = field(default_factory=dict)  # *_custom_fields -> {cf_: column}
    flags: Flags = Flags()
    settings: Settings = Settings()

    @classmethod
    def from_section(cls, section: Any, settings: Settings) -> SnapshotSpec:
        """From `pipeline.config.SnapshotConfig` (duck-typed so this layer needs no pydantic)."""
        fields: dict[str, str] = {}
        custom: dict[str, dict[str, str]] = {}
        for name, column in section.fields.items():
            if name in CUSTOM_FIELD_FIELDS:
                custom[name] = dict(column)
            else:
                fields[name] = column
        return cls(tuple(section.primary_key), fields, custom, section.flags(), settings)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the job reads: primary key first, then mapped columns, each once."""
        out = list(dict.fromkeys(self.primary_key))
        for column in [
            *self.fields.values(),
            *(c for cfs in self.custom_fields.values() for c in cfs.values()),
        ]:
            if column not in out:
                out.append(column)
        return tuple(out)

    @property
    def digest(self) -> str:
        """Identity of everything besides the cells that decides what a row does in Close."""
        blob = json.dumps(
            {
                "primary_key": self.primary_key,
                "fields": self.fields,
                "custom_fields": self.custom_fields,
                "flags": self.flags.__dict__,
                "company_cf": self.settings.lead_custom_field_id_for_company_id,
                "user_cf": self.settings.contact_custom_field_id_for_user_id,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def targets(self) -> dict[str, list[str]]:
        """column -> what it feeds (``primary_key``, ``contact_email``, ``lead_custom_fields.cf_x``)."""
        out: dict[str, list[str]] = {}
        for column in self.primary_key:
            out.setdefault(column, []).append("primary_key")
        for name, column in self.fields.items():
            out.setdefault(column, []).append(name)
        for name, cfs in self.custom_fields.items():
            for cf, column in cfs.items():
                out.setdefault(column, []).append(f"{name}.{cf}")
        return out


# ---------------------------------------------------------------------------- schema


def check_schema(spec: SnapshotSpec, kinds: Mapping[str, str], source: str) -> list[str]:
    """Problems of one file's schema (column -> kind, see `arrow_kind`/`avro_kind`) against the spec."""
    problems = []
    for column, uses in spec.targets().items():
        kind = kinds.get(column)
        if kind is None:
            problems.append(f"{source}: column {column!r} (for {', '.join(uses)}) is missing")
            continue
        for use in uses:
            role = "primary_key" if use == "primary_key" else "custom_field" if "." in use else "string_field"
            if kind not in ACCEPTS[role]:
                problems.append(
                    f"{source}: column {column!r} is {kind}, which cannot become {use} "
                    f"(accepted: {', '.join(sorted(ACCEPTS[role]))})"
                )
    return problems


def arrow_kind(arrow_type: Any) -> str:
    """The kind of a pyarrow type."""
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(arrow_type):
        return arrow_kind(arrow_type.value_type)
    if isinstance(arrow_type, pa.BaseExtensionType):
        return arrow_kind(arrow_type.storage_type)
    checks = (
        (t.is_null, "null"),
        (t.is_boolean, "boolean"),
        (t.is_integer, "integer"),
        (t.is_floating, "float"),
        (t.is_decimal, "decimal"),
        (t.is_date, "date"),
        (t.is_timestamp, "timestamp"),
        (t.is_time, "time"),
        (lambda x: t.is_string(x) or t.is_large_string(x) or t.is_string_view(x), "string"),
        (
            lambda x: (
                t.is_binary(x) or t.is_large_binary(x) or t.is_fixed_size_binary(x) or t.is_binary_view(x)
            ),
            "binary",
        ),
        (lambda x: t.is_list(x) or t.is_large_list(x) or t.is_fixed_size_list(x), "list"),
        (t.is_struct, "struct"),
        (t.is_map, "map"),
    )
    for check, kind in checks:
        if check(arrow_type):
            return kind
    return str(arrow_type)


_AVRO_PRIMITIVES = {
    "string": "string",
    "int": "integer",
    "long": "integer",
    "float": "float",
    "double": "float",
    "boolean": "boolean",
    "bytes": "binary",
    "null": "null",
}
_AVRO_LOGICAL = {"decimal": "decimal", "date": "date", "uuid": "string"}


def avro_kind(schema: Any) -> str:
    """The kind of an Avro field type (unions with null are their other member)."""
    if isinstance(schema, list):
        members = [m for m in schema if m != "null"]
        if not members:
            return "null"
        kinds = {avro_kind(m) for m in members}
        return kinds.pop() if len(kinds) == 1 else "union"
    if isinstance(schema, dict):
        logical = schema.get("logicalType", "")
        if logical in _AVRO_LOGICAL:
            return _AVRO_LOGICAL[logical]
        if logical.startswith("timestamp"):
            return "timestamp"
        if logical.startswith("time"):
            return "time"
        complex_kinds = {
            "record": "struct",
            "array": "list",
            "map": "map",
            "enum": "string",
            "fixed": "binary",
        }
        if schema.get("type") in complex_kinds:
            return complex_kinds[schema["type"]]
        return avro_kind(schema.get("type"))
    return _AVRO_PRIMITIVES.get(str(schema), f"named type {schema}")


def kind_changes(spec: SnapshotSpec, before: Mapping[str, Any], now: Mapping[str, str]) -> list[str]:
    """Mapped columns whose kind differs from the previous run's (``before`` comes from the state).

    A new kind changes every row's fingerprint (``5`` and ``"5"`` hash apart) while the rows may
    mean the same, so the run stops and asks for --full rather than resend the table by surprise.
    Columns without values (kind null) on either side are not a change.
    """
    problems = []
    for column in spec.columns:
        old, new = before.get(column), now.get(column)
        if isinstance(old, str) and new is not None and old != new and "null" not in (old, new):
            problems.append(f"column {column!r} was {old} in the previous run and is {new} now")
    return problems


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class NanoTimestamp:
    """A timestamp finer than a microsecond, which Python's datetime cannot hold: its ISO 8601 text
    with nine fractional digits (and the offset, for a zoned one). One on a whole microsecond is read
    as a datetime instead, so its fingerprint is the one it always had."""

    text: str

    def isoformat(self) -> str:
        return self.text


def arrow_values(column: Any) -> list[Any]:
    """A pyarrow column's (or array's) cells as Python values, exactly: a nanosecond timestamp
    becomes a `NanoTimestamp` where ``to_pylist`` would raise (or, with pandas installed, hand back a
    pandas Timestamp), at the top level and inside lists."""
    import pyarrow as pa

    arrow_type = column.type
    if not _has_nanos(arrow_type):
        return column.to_pylist()
    if isinstance(column, pa.ChunkedArray):
        return [value for chunk in column.chunks for value in arrow_values(chunk)]
    if pa.types.is_dictionary(arrow_type):
        return arrow_values(column.dictionary_decode())
    if pa.types.is_timestamp(arrow_type):
        return _timestamps(column)
    import pyarrow.compute as pc

    items = arrow_values(column.flatten())  # lists (the only nested kind a mapping takes)
    out: list[Any] = []
    at = 0
    for length in pc.list_value_length(column).to_pylist():
        if length is None:
            out.append(None)
        else:
            out.append(items[at : at + length])
            at += length
    return out


def _has_nanos(arrow_type: Any) -> bool:
    import pyarrow as pa

    t = pa.types
    if t.is_timestamp(arrow_type):
        return arrow_type.unit == "ns"
    if t.is_dictionary(arrow_type):
        return _has_nanos(arrow_type.value_type)
    if t.is_list(arrow_type) or t.is_large_list(arrow_type) or t.is_fixed_size_list(arrow_type):
        return _has_nanos(arrow_type.value_type)
    return False


def _timestamps(column: Any) -> list[Any]:
    """timestamp[ns] cells: a datetime on a whole microsecond, else a `NanoTimestamp`."""
    import numpy as np
    import pyarrow as pa

    nanos = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    below = nanos % 1000  # floor division: right before 1970 too
    micros = pa.array((nanos - below) // 1000, pa.int64()).view(pa.timestamp("us", column.type.tz))
    out = micros.to_pylist()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(~valid).tolist():
        out[i] = None
    for i in np.flatnonzero(valid & (below != 0)).tolist():
        moment = out[i]
        text = moment.replace(microsecond=0).isoformat()  # YYYY-MM-DDTHH:MM:SS, then any offset
        out[i] = NanoTimestamp(f"{text[:19]}.{moment.microsecond * 1000 + int(below[i]):09d}{text[19:]}")
    return out


def primary_key_of(values: Values, width: int) -> str | None:
    """The row's key as text; None when a key cell is null (such a row cannot be tracked).

    A single text column is the key as is; anything else is a JSON list of the cells, where a
    decimal keeps its exact digits (two keys that differ in the twentieth decimal stay two keys).
    """
    key = values[:width]
    if any(v is None for v in key):
        return None
    if width == 1 and isinstance(key[0], str):
        return key[0]
    return "[" + ",".join(_key_json(v) for v in key) + "]"


def _key_json(value: Any) -> str:
    if isinstance(value, Decimal) and value.is_finite():
        if value == value.to_integral_value():
            return str(int(value))
        text = format(value, "f")  # every digit, never an exponent
        return text.rstrip("0").rstrip(".") if "." in text else text
    return json.dumps(_json_value(value))


def fingerprint(digest: str, values: Values) -> Fingerprint:
    blob = digest + "\x1f" + "\x1f".join(map(repr, values))
    return hashlib.blake2b(blob.encode(), digest_size=FINGERPRINT_BYTES).digest()


def primary_keys(columns: Sequence[Sequence[Any]], width: int) -> list[str | None]:
    """`primary_key_of` for a batch of rows given column by column (key columns first)."""
    if width == 1:
        return [v if v is None or type(v) is str else primary_key_of((v,), 1) for v in columns[0]]
    return [primary_key_of(key, width) for key in zip(*columns[:width], strict=True)]


def fingerprints(digest: str, rows: Iterable[Values]) -> list[Fingerprint]:
    """`fingerprint` for a batch of rows (one tight loop: this is the diff's per-row cost)."""
    prefix, join, blake2b = digest + "\x1f", "\x1f".join, hashlib.blake2b
    return [
        blake2b((prefix + join(map(repr, values))).encode(), digest_size=FINGERPRINT_BYTES).digest()
        for values in rows
    ]


def bucket_of(key: str, buckets: int) -> int:
    """The hash bucket of a primary key: stable across processes and runs (unlike `hash`)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % buckets


def buckets_of(keys: Iterable[str], buckets: int) -> list[int]:
    crc32 = zlib.crc32
    return [crc32(key.encode("utf-8", "surrogatepass")) % buckets for key in keys]


def row_record(spec: SnapshotSpec, values: Values) -> dict[str, Any]:
    """The row as JSON-able column -> value, for dead letters and dry-run plans."""
    return {c: _json_value(v) for c, v in zip(spec.columns, values, strict=True)}


def request_for(spec: SnapshotSpec, values: Values, key: str) -> UpsertRequest:
    """The row as a normalised request, as the action would build it; null cells are "no value". Raises `BadEvent`."""
    cells = dict(zip(spec.columns, values, strict=True))
    raw: dict[str, Any] = {name: _text_of_nanos(cells[column]) for name, column in spec.fields.items()}
    for name, cfs in spec.custom_fields.items():
        raw[name] = {cf: _json_value(cells[column]) for cf, column in cfs.items()}
    return request_from_values(raw, spec.flags, event_ids=(f"row:{key}",))


def _text_of_nanos(value: Any) -> Any:
    return value.text if isinstance(value, NanoTimestamp) else value


def _json_value(value: Any) -> Any:
    """Warehouse cell -> JSON type: dates as ISO text, decimals as numbers, lists item by item."""
    if isinstance(value, dt.datetime | dt.date | dt.time | NanoTimestamp):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


# ---------------------------------------------------------------------------- diff


def classify(new: Sequence[Fingerprint], old: Sequence[Fingerprint], *, full: bool = False) -> DiffKind:
    """One primary key's fate from its fingerprints in the snapshot (new) and the state (old)."""
    if not new:
        return "gone"
    if len(new) > 1:
        return "duplicate"
    if not old:
        return "new"
    if new[0] == old[0]:
        return "resync" if full else "unchanged"
    return "changed"


def diff_states(
    snapshot: Mapping[str, Fingerprint], state: Mapping[str, Fingerprint], *, full: bool = False
) -> dict[str, DiffKind]:
    """Reference diff of two whole states (for tests and reasoning; the job does this in Beam)."""
    return {
        key: classify(
            [snapshot[key]] if key in snapshot else [], [state[key]] if key in state else [], full=full
        )
        for key in snapshot.keys() | state.keys()
    }


def next_state(
    state: Mapping[str, Fingerprint],
    snapshot: Mapping[str, Fingerprint],
    kinds: Mapping[str, DiffKind],
    failed: frozenset[str] = frozenset(),
) -> dict[str, Fingerprint]:
    """What the state becomes: applied rows take their new fingerprint, failed ones keep the old, gone ones leave."""
    out: dict[str, Fingerprint] = {}
    for key, kind in kinds.items():
        if kind == "gone":
            continue
        if kind == "unchanged" or key in failed or kind == "duplicate":
            if key in state:
                out[key] = state[key]
            continue
        out[key] = snapshot[key]
    return out


@dataclass(frozen=True)
class BucketDiff:
    """What `diff_bucket` found. Row numbers index the snapshot's arrays; ``keep`` stays columnar."""

    changes: list[tuple[int, ChangeKind, Fingerprint | None]]  # (row, kind, previous fingerprint)
    keep_keys: Any  # pyarrow string array: keys whose state fingerprint carries over as is
    keep_fingerprints: Any  # pyarrow binary array, aligned with keep_keys
    gone: list[str]
    duplicates: dict[str, list[int]]  # key -> rows sharing it (all dead-lettered)
    counts: dict[DiffKind, int]


def diff_bucket(
    keys: Any, fps: Any, old_keys: Any, old_fps: Any, *, full: bool = False, partial: bool = False
) -> BucketDiff:
    """`classify` for every key of one bucket at once, vectorised with pyarrow.

    ``keys``/``fps`` are the snapshot's rows (string and binary arrays, no nulls), ``old_keys``/``old_fps``
    the state's. Agrees with `diff_states` and `next_state` key by key (see tests/snapshot).
    ``partial``: the snapshot holds only some of the table's rows (an incremental read), so a state key
    it lacks was not read rather than gone: it is counted ``unread`` and keeps its fingerprint.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(keys)
    position = pc.index_in(keys, value_set=old_keys)  # where each key sits in the state; null: new
    previous = old_fps.take(position)
    present = pc.is_valid(position).to_numpy(zero_copy_only=False)
    same = pc.fill_null(pc.equal(fps, previous), False).to_numpy(zero_copy_only=False)
    single = np.ones(n, dtype=bool)
    duplicates: dict[str, list[int]] = {}
    if n and pc.count_distinct(keys).as_py() < n:
        counted = pc.value_counts(keys)
        repeated = counted.field("values").filter(pc.greater(counted.field("counts"), 1))
        single = ~pc.is_in(keys, value_set=repeated).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~single).tolist():
            duplicates.setdefault(keys[row].as_py(), []).append(row)

    unchanged = single & same
    rows = np.flatnonzero(single if full else single & ~same)
    previous_of_rows = previous.take(pa.array(rows, pa.int64())).to_pylist()
    kind_of = np.where(~present[rows], 0, np.where(same[rows], 1, 2)).tolist()
    kinds: tuple[ChangeKind, ...] = ("new", "resync", "changed")
    changes = [
        (row, kinds[k], prev) for row, k, prev in zip(rows.tolist(), kind_of, previous_of_rows, strict=True)
    ]

    keep_mask = pa.array(np.zeros(n, dtype=bool) if full else unchanged)
    keep_keys, keep_fps = keys.filter(keep_mask), previous.filter(keep_mask)
    carried = [(key, previous[rs[0]].as_py()) for key, rs in duplicates.items() if present[rs[0]]]
    if carried:  # a duplicated key keeps what it had
        keep_keys = pa.concat_arrays([keep_keys, pa.array([k for k, _ in carried], keep_keys.type)])
        keep_fps = pa.concat_arrays([keep_fps, pa.array([f for _, f in carried], keep_fps.type)])

    missing = pc.invert(pc.is_in(old_keys, value_set=keys)) if len(old_keys) else None
    gone: list[str] = []
    unread = 0
    if missing is not None and partial:
        unread_keys, unread_fps = old_keys.filter(missing), old_fps.filter(missing)
        unread = len(unread_keys)
        if unread:
            keep_keys = pa.concat_arrays([keep_keys, unread_keys.cast(keep_keys.type)])
            keep_fps = pa.concat_arrays([keep_fps, unread_fps.cast(keep_fps.type)])
    elif missing is not None:
        gone = old_keys.filter(missing).to_pylist()
    counts: dict[DiffKind, int] = {
        "new": int((single & ~present).sum()),
        "changed": int((single & present & ~same).sum()),
        "unchanged": 0 if full else int(unchanged.sum()),
        "resync": int(unchanged.sum()) if full else 0,
        "gone": len(gone),
        "duplicate": len(duplicates),
        "unread": unread,
    }
    return BucketDiff(changes, keep_keys, keep_fps, gone, duplicates, counts)
