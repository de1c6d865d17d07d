"""Reading a snapshot straight from a warehouse table or query, as Arrow record batches.

DuckDB (embedded) and PostgreSQL are read here with Arrow-native drivers: DuckDB's own Arrow output
and ADBC's libpq driver, which streams a ``COPY … (FORMAT binary)`` into Arrow batches. The batches
go into the diff's bucketing (`transforms.snapshot.BucketRows`) as Parquet row groups do, with no
row-by-row driver in between. BigQuery is read by Beam's ReadFromBigQuery (transforms/warehouse.py); only its
schema and high-water-mark look-ups live here.

A read is split into slices by a hash of the primary key (``hashtext`` on PostgreSQL, ``hash`` on
DuckDB), so that several workers can each read one; a slice is fetched in record batches of a fixed
number of rows, so a worker holds one batch at a time, not its slice.

Every driver error becomes one `WarehouseError` line that says what to fix, with the password
scrubbed out of it (drivers echo connection strings in some errors).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from closecrm.reverse_etl.warehouse_url import Password, PasswordSource, WarehouseURL, scrub

# Kinds (closecrm.reverse_etl.snapshot.arrow_kind) whose order a high-water mark can follow.
SINCE_KINDS = frozenset({"integer", "decimal", "float", "date", "timestamp"})
MAX_DETAIL = 200
SUBQUERY = "close_sync_source"


class WarehouseError(RuntimeError):
    """The warehouse could not be read as asked; one line with what to fix, never the password."""


@dataclass(frozen=True)
class WarehouseSource:
    """What to read: a table or a query at a URL, optionally only rows from a column's mark on."""

    url: WarehouseURL
    table: str | None = None
    query: str | None = None
    since_column: str | None = None
    password: PasswordSource = field(default_factory=PasswordSource)

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise WarehouseError("give exactly one of --table NAME or --query SQL with --from")
        if self.query is not None and not self.query.strip().rstrip(";").strip():
            raise WarehouseError("--query is empty")

    @property
    def dialect(self) -> str:
        return self.url.dialect

    def describe(self) -> str:
        """For messages and the state's manifest: the masked URL and the table, or that it is a query."""
        what = f"table {self.table}" if self.table is not None else f"query {self.query_digest()}"
        return f"{self.url.masked()} {what}"

    def query_digest(self) -> str:
        return "sha256:" + hashlib.sha256((self.query or "").encode("utf-8")).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What must match between runs for the previous run's high-water mark to hold."""
        return {
            "url": self.url.masked(),
            "table": self.table,
            "query": self.query_digest() if self.query is not None else None,
            "since_column": self.since_column,
        }

    def base_sql(self) -> str:
        """The rows as a FROM item: the quoted table, or the query in parentheses."""
        if self.table is not None:
            return table_name(self.table, self.dialect)
        return "(" + self.query.strip().rstrip(";").rstrip() + ")"  # type: ignore[union-attr]


def quote(name: str, dialect: str) -> str:
    if dialect == "bigquery":
        return "`" + name.replace("`", "\\`") + "`"
    return '"' + name.replace('"', '""') + '"'


def table_name(table: str, dialect: str) -> str:
    """``schema.table`` (BigQuery: ``dataset.table`` or ``project.dataset.table``) with each part quoted."""
    parts = (table.replace(":", ".") if dialect == "bigquery" else table).split(".")
    if not all(p.strip() for p in parts):
        raise WarehouseError(f"--table {table!r}: expected NAME or SCHEMA.NAME")
    if dialect == "bigquery":
        return quote(".".join(parts), dialect)
    return ".".join(quote(p, dialect) for p in parts)


# ---------------------------------------------------------------------------- high-water marks


@dataclass(frozen=True)
class Watermark:
    """The largest value of the since-column a run saw before it read; the next run reads the rows at
    or after it (a row updated later with the same value, or a new row with it, is read again, and
    the diff finds whether it changed) and the rows where the column is NULL.

    Stored as text in the state's manifest and checked when read back (the state is not trusted):
    the SQL literal is rendered from the parsed value, never from the stored text.
    """

    kind: str  # integer | decimal | float | date | timestamp
    value: str

    @classmethod
    def of(cls, value: Any, kind: str) -> Watermark | None:
        if value is None:
            return None
        if isinstance(value, dt.datetime | dt.date):
            return cls(kind, value.isoformat())
        return cls(kind, str(value))

    @classmethod
    def from_json(cls, data: Any) -> Watermark | None:
        if (
            not isinstance(data, dict)
            or data.get("kind") not in SINCE_KINDS
            or not isinstance(data.get("value"), str)
        ):
            return None
        mark = cls(data["kind"], data["value"])
        try:
            mark.parsed()
        except (ValueError, InvalidOperation):
            return None
        return mark

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value}

    def parsed(self) -> Any:
        if self.kind == "integer":
            return int(self.value)
        if self.kind == "decimal":
            number = Decimal(self.value)
            if not number.is_finite():
                raise ValueError("not finite")
            return number
        if self.kind == "float":
            number = float(self.value)
            if not math.isfinite(number):
                raise ValueError("not finite")
            return number
        if self.kind == "date":
            return dt.date.fromisoformat(self.value)
        return dt.datetime.fromisoformat(self.value)

    def literal(self, dialect: str) -> str:
        value = self.parsed()
        if self.kind in ("integer", "decimal"):
            return str(value)
        if self.kind == "float":
            return repr(value)
        if self.kind == "date":
            return f"DATE '{value.isoformat()}'"
        if value.tzinfo is None:
            return f"{'DATETIME' if dialect == 'bigquery' else 'TIMESTAMP'} '{value.isoformat(sep=' ')}'"
        return f"{'TIMESTAMP' if dialect == 'bigquery' else 'TIMESTAMPTZ'} '{value.isoformat(sep=' ')}'"


# ---------------------------------------------------------------------------- the read plan


@dataclass(frozen=True)
class ReadPlan:
    """What every worker reads: the columns (some cast to text), the slices, the batch size, the mark.

    Picklable and free of secrets: the password is read on the worker from ``source.password``.
    """

    source: WarehouseSource
    columns: tuple[str, ...]  # spec.columns, primary key first
    key_width: int
    slices: int
    batch_rows: int
    as_text: frozenset[str] = frozenset()  # driver types without a plain Arrow type (uuid, numeric, json)
    since: Watermark | None = None  # read only rows whose since_column is at or after this, or NULL

    def slice_sql(self, slice_id: int) -> str:
        """The SELECT one worker runs for one slice (all rows when there is one slice)."""
        d = self.source.dialect
        items = []
        for column in self.columns:
            name = quote(column, d)
            items.append(
                f"CAST({name} AS {'STRING' if d == 'bigquery' else 'TEXT'}) AS {name}"
                if column in self.as_text
                else name
            )
        sql = f"SELECT {', '.join(items)} FROM {self.source.base_sql()} AS {SUBQUERY}"
        where = self.where(slice_id)
        return f"{sql} WHERE {' AND '.join(where)}" if where else sql

    def where(self, slice_id: int | None = None) -> list[str]:
        d = self.source.dialect
        out = []
        if self.since is not None and self.source.since_column:
            column = quote(self.source.since_column, d)
            out.append(f"({column} >= {self.since.literal(d)} OR {column} IS NULL)")
        if slice_id is not None and self.slices > 1:
            out.append(f"{self.slice_hash()} % {self.slices} = {int(slice_id)}")
        return out

    def slice_hash(self) -> str:
        """A non-negative hash of the key columns, on the source's own values; a null key hashes too."""
        d = self.source.dialect
        keys = [quote(c, d) for c in self.columns[: self.key_width]]
        if d == "duckdb":
            return f"hash({', '.join(keys)})"
        text = (
            keys[0] + "::text"
            if len(keys) == 1
            else f"concat_ws(chr(31), {', '.join(k + '::text' for k in keys)})"
        )
        return f"(coalesce(hashtext({text}), 0) & 2147483647)"


# ---------------------------------------------------------------------------- connections


def connect(source: WarehouseSource) -> Connection:
    """A connection for the launcher's checks or a worker's slice; the password is read here."""
    password = source.password.read()
    if source.dialect == "duckdb":
        return _DuckDB(source)
    if source.dialect == "postgresql":
        return _Postgres(source, password)
    raise WarehouseError(f"{source.url.masked()}: read through Beam's ReadFromBigQuery, not a connection")


class Connection:
    """One open connection: schema and scalar look-ups, and a query's rows as Arrow tables."""

    source: WarehouseSource
    password: Password | None = None

    def schema(self, sql: str) -> Any:
        """The Arrow schema of ``sql``'s result, without reading its rows."""
        raise NotImplementedError

    def scalar(self, sql: str) -> Any:
        raise NotImplementedError

    def batches(self, sql: str, rows: int) -> Iterator[Any]:
        """``sql``'s rows as pyarrow Tables of exactly ``rows`` rows (the last one: what is left)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def failure(self, exc: BaseException, doing: str) -> WarehouseError:
        """A driver's error as one line: what was asked, the driver's first line, what to do."""
        detail = driver_detail(str(exc), self.password)
        where = self.source.url.masked()
        if doing == "connect":
            if "password" in detail.lower() or "authentication" in detail.lower():
                fix = f"check the user in the URL and the password in {self.source.password.describe()}"
            else:
                fix = "check the host, the port and that the server is running"
            return WarehouseError(f"cannot connect to {where} ({detail}): {fix}")
        if self.source.table is not None and _missing_relation(exc, detail):
            return WarehouseError(
                f"--table {self.source.table}: no such table at {where} ({detail}): check the name "
                "(SCHEMA.NAME) and that the user may read it"
            )
        if self.source.query is not None:
            return WarehouseError(
                f"--query failed at {where} ({detail}): fix the SQL (try it in the database's own shell first)"
            )
        return WarehouseError(f"reading {self.source.describe()} failed ({detail})")


def _missing_relation(exc: BaseException, detail: str) -> bool:
    name = type(exc).__name__
    text = detail.lower()
    return name == "CatalogException" or (
        "does not exist" in text and ("relation" in text or "table" in text)
    )


def driver_detail(message: str, password: Password | None) -> str:
    """The useful first line of a driver's error, password scrubbed, prefixes and echoed SQL dropped."""
    text = scrub(message, password)
    for marker in ("ERROR:", "FATAL:"):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    else:
        for prefix in ("IO: ", "[libpq] "):
            text = text.replace(prefix, "")
    line = next((part.strip() for part in text.splitlines() if part.strip()), "") or type(message).__name__
    line = line.split("Query was:", 1)[0].strip()
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def rebatch(batches: Any, rows: int) -> Iterator[Any]:
    """Record batches of any size → pyarrow Tables of ``rows`` rows (the last: the rest)."""
    import pyarrow as pa

    pending: list[Any] = []
    size = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - size, batch.num_rows)
            pending.append(batch.slice(0, take))
            size += take
            batch = batch.slice(take)
            if size == rows:
                yield pa.Table.from_batches(pending).combine_chunks()
                pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks()


class _DuckDB(Connection):
    def __init__(self, source: WarehouseSource) -> None:
        import duckdb

        self.source = source
        path = source.url.database
        try:
            # Read-only: the job never writes the warehouse, and several readers may share the file.
            self._con = duckdb.connect(path, read_only=True) if path else duckdb.connect()
        except Exception as exc:  # noqa: BLE001 - every driver error becomes one line
            detail = driver_detail(str(exc), None)
            raise WarehouseError(
                f"cannot open the DuckDB database {path} ({detail}): check the path "
                "(duckdb:///relative/file.duckdb, duckdb:////absolute/file.duckdb)"
            ) from None

    def schema(self, sql: str) -> Any:
        try:
            return self._con.sql(f"SELECT * FROM {sql} AS close_sync_probe LIMIT 0").to_arrow_table().schema
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "schema") from None

    def scalar(self, sql: str) -> Any:
        try:
            rows = self._con.sql(sql).fetchall()
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "scalar") from None
        return rows[0][0] if rows else None

    def batches(self, sql: str, rows: int) -> Iterator[Any]:
        try:
            reader = self._con.sql(sql).to_arrow_reader(rows)
            yield from rebatch(reader, rows)
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "read") from None

    def close(self) -> None:
        self._con.close()


class _Postgres(Connection):
    def __init__(self, source: WarehouseSource, password: Password | None) -> None:
        from adbc_driver_postgresql import dbapi

        self.source = source
        self.password = password
        try:
            self._con = dbapi.connect(source.url.connect_uri(password), autocommit=True)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "connect") from None

    def schema(self, sql: str) -> Any:
        try:
            with self._con.cursor() as cur:
                cur.execute(f"SELECT * FROM {sql} AS close_sync_probe LIMIT 0")
                return cur.fetch_arrow_table().schema
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "schema") from None

    def scalar(self, sql: str) -> Any:
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
                row = cur.fetchone()
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "scalar") from None
        return row[0] if row else None

    def batches(self, sql: str, rows: int) -> Iterator[Any]:
        try:
            with self._con.cursor() as cur:
                cur.execute(sql)
                yield from rebatch(cur.fetch_record_batch(), rows)
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "read") from None

    def close(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: BLE001, S110 - closing a broken connection has nothing left to report
            pass


# ---------------------------------------------------------------------------- launcher look-ups


@dataclass(frozen=True)
class Probe:
    """What the launcher learns before anything is read: each column's kind, and which to read as text."""

    kinds: dict[str, str]  # column -> closecrm.reverse_etl.snapshot kind, after the casts below
    as_text: frozenset[str] = frozenset()  # driver types with no plain Arrow type (uuid, numeric, json…)


def probe(source: WarehouseSource) -> Probe:
    """Connect and read the source's schema (no rows): an unknown table, a bad query or an unreachable
    server fails here, before the state is touched."""
    if source.dialect == "bigquery":
        return _bigquery_probe(source)
    import pyarrow as pa

    from closecrm.reverse_etl.snapshot import arrow_kind

    with connect(source) as con:
        schema = con.schema(source.base_sql())
    as_text = frozenset(f.name for f in schema if isinstance(f.type, pa.BaseExtensionType))
    kinds = {f.name: "string" if f.name in as_text else arrow_kind(f.type) for f in schema}
    return Probe(kinds, as_text)


def high_water_mark(source: WarehouseSource, kind: str) -> Watermark | None:
    """The since-column's largest value now, taken before the read: rows written during the read
    are read again next run rather than missed."""
    column = quote(source.since_column or "", source.dialect)
    sql = f"SELECT max({column}) FROM {source.base_sql()} AS {SUBQUERY}"
    if source.dialect == "bigquery":
        return Watermark.of(_bigquery_scalar(source, sql), kind)
    with connect(source) as con:
        return Watermark.of(con.scalar(sql), kind)


def _bigquery_client(source: WarehouseSource) -> Any:
    from google.cloud import bigquery

    return bigquery.Client(project=source.url.database)


_BQ_KINDS = {
    "STRING": "string",
    "INTEGER": "integer",
    "INT64": "integer",
    "FLOAT": "float",
    "FLOAT64": "float",
    "NUMERIC": "decimal",
    "BIGNUMERIC": "decimal",
    "BOOLEAN": "boolean",
    "BOOL": "boolean",
    "DATE": "date",
    "DATETIME": "timestamp",
    "TIMESTAMP": "timestamp",
    "TIME": "time",
    "BYTES": "binary",
    "RECORD": "struct",
    "STRUCT": "struct",
    "JSON": "string",
}


def bigquery_kinds(fields: Sequence[Any]) -> dict[str, str]:
    """Column -> kind from BigQuery SchemaFields (REPEATED ones are lists)."""
    return {
        f.name: "list" if f.mode == "REPEATED" else _BQ_KINDS.get(f.field_type, f.field_type.lower())
        for f in fields
    }


def _bigquery_probe(source: WarehouseSource) -> Probe:
    try:
        client = _bigquery_client(source)
        if source.table is not None:
            fields = client.get_table(source.table.replace(":", ".")).schema
        else:
            from google.cloud import bigquery

            job = client.query(
                source.query, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
            )
            fields = job.schema
    except Exception as exc:  # noqa: BLE001
        raise WarehouseError(
            f"cannot read the schema of {source.describe()} ({driver_detail(str(exc), None)}): check the "
            "project, the name or the SQL, and the credentials (gcloud auth application-default login)"
        ) from None
    return Probe(bigquery_kinds(fields))


def _bigquery_scalar(source: WarehouseSource, sql: str) -> Any:
    try:
        rows = list(_bigquery_client(source).query(sql).result())
    except Exception as exc:  # noqa: BLE001
        raise WarehouseError(
            f"reading {source.describe()} failed ({driver_detail(str(exc), None)})"
        ) from None
    return rows[0][0] if rows else None
