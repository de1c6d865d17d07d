"""Close → warehouse export: keyset-paged search over parallel time slices, rows flattened the way Hull does."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine.definitions import custom_field_definitions
from closecrm.engine.view import cursor_refused
from closecrm.reverse_etl.export_schema import (
    FLAT_TYPES,
    LIST_COLUMNS,
    CustomColumn,
    custom_columns,
    table_schema,
    to_avro,
)

Doc = dict[str, Any]
Row = dict[str, Any]
Format = Literal["parquet", "avro"]

PAGE_SIZE = 200  # Close's largest search page
# Names per `_fields` list in one search: public reports describe Close refusing long lists ("List
# is too long") without saying where the limit is; more custom fields are read in further passes.
FIELDS_PER_SEARCH = 40
CURSOR_RESTARTS = 3  # a cursor that expired mid-walk: the walk starts again, this many times at most
TICK = timedelta(microseconds=1)  # Close's dates have microsecond precision
LEAD_FIELDS = ("id", "name", "status_id", "status_label", "date_created", "date_updated")
CONTACT_FIELDS = (
    "id",
    "lead_id",
    "name",
    "title",
    "emails",
    "phones",
    "urls",
    "date_created",
    "date_updated",
)


@dataclass(frozen=True)
class ExportRequest:
    """What to export and where. ``updated_since`` keeps records with date_updated ≥ it."""

    out_dir: Path
    format: Format = "parquet"
    updated_since: datetime | None = None
    company_id_field: str = ""  # lead custom field (cf_…) holding the company id
    user_id_field: str = ""  # contact custom field (cf_…) holding the user id
    slices: int = 4  # time slices read concurrently per object type
    page_size: int = PAGE_SIZE


@dataclass
class ExportResult:
    leads: int
    contacts: int
    paths: list[Path]
    seconds: float
    counters: dict[str, Any] = field(default_factory=dict)
    unconvertible: int = 0  # custom values that did not fit their field's type (written as null)

    @property
    def rows(self) -> int:
        return self.leads + self.contacts

    def line(self) -> str:
        c = self.counters
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        groups = ", ".join(f"{k} {v}" for k, v in sorted(c.get("calls_by_group", {}).items()))
        extra = (
            f", {self.unconvertible} unconvertible custom value(s) written as null"
            if self.unconvertible
            else ""
        )
        return (
            f"exported {self.leads} leads + {self.contacts} contacts = {self.rows} rows in {self.seconds:.1f} s "
            f"({rate:,.0f} rows/s); {c.get('calls', 0)} API calls ({groups}), "
            f"{c.get('rate_limited', 0)} rate-limited{extra}"
        )


# ------------------------------------------------------------------------------ moments


def parse_moment(value: str) -> datetime:
    """An ISO-8601 date or datetime as an aware UTC datetime (naive means UTC; a date means its midnight)."""
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or datetime: {value!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _utc(moment: datetime) -> dict[str, str]:
    return {"type": "fixed_utc", "value": moment.isoformat(timespec="microseconds")}


# ------------------------------------------------------------------------------- paging


@dataclass(frozen=True)
class TimeSlice:
    """Records whose key date is in [start, end); None is unbounded."""

    start: datetime | None
    end: datetime | None


def split(first: datetime, last: datetime, n: int, start: datetime | None) -> list[TimeSlice]:
    """n equal slices from `first` to `last`; the first starts at `start`, the last is open-ended
    so that records written while the export runs are still read."""
    span = last - first
    n = max(1, min(n, span // TICK))
    cuts = [first + span * i / n for i in range(1, n)]
    bounds = [start, *cuts, None]
    return [TimeSlice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


class SearchPager:
    """Reads every record of one object type through /data/search/ without deep cursors.

    Close caps `_skip`, expires search cursors after about 30 s and ends a cursor walk after 10,000
    records, so each page is a fresh query sorted by the key date (the only sort it documents) whose
    lower bound moves to the last date seen; the records at exactly that date that were already read
    are dropped from the next page. Only when more records share one date than a page holds is a
    cursor used, and then just to read that single date (started again if it expires).
    """

    def __init__(
        self,
        client: CloseClient,
        object_type: str,
        key: str,
        fields: Sequence[str],
        since: datetime | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.client = client
        self.object_type = object_type
        self.key = key
        self.fields = list(fields)
        self.since = since
        self.page_size = page_size

    def _field(self, name: str) -> Doc:
        return {"type": "regular_field", "object_type": self.object_type, "field_name": name}

    def _body(self, lower: datetime | None, upper: datetime | None, *, limit: int, desc: bool = False) -> Doc:
        queries: list[Doc] = [{"type": "object_type", "object_type": self.object_type}]
        if lower is not None or upper is not None:
            condition: Doc = {"type": "moment_range"}
            if lower is not None:
                condition["on_or_after"] = _utc(lower)
            if upper is not None:
                condition["before"] = _utc(upper)
            queries.append(
                {"type": "field_condition", "field": self._field(self.key), "condition": condition}
            )
        direction = "desc" if desc else "asc"
        return {
            "query": {"type": "and", "queries": queries},
            "sort": [{"field": self._field(self.key), "direction": direction}],
            "_fields": {self.object_type: self.fields},
            "_limit": limit,
        }

    async def _search(self, body: Doc) -> tuple[list[Doc], str | None]:
        response = await self.client.post("data/search/", body)
        return response.get("data") or [], response.get("cursor")

    def _moment(self, doc: Doc) -> datetime:
        return parse_moment(doc[self.key])

    async def slices(self, n: int) -> list[TimeSlice]:
        """Split the key dates present (≥ since) into n slices: two one-record searches find the ends."""
        (first, _), (last, _) = await asyncio.gather(
            self._search(self._body(self.since, None, limit=1)),
            self._search(self._body(self.since, None, limit=1, desc=True)),
        )
        if not first:
            return []
        return split(self._moment(first[0]), self._moment(last[0]), n, self.since)

    async def read(self, part: TimeSlice) -> list[Doc]:
        out: list[Doc] = []
        lower, seen_at_lower = part.start, frozenset[str]()
        while True:
            page, cursor = await self._search(self._body(lower, part.end, limit=self.page_size))
            out.extend(d for d in page if d["id"] not in seen_at_lower)
            if cursor is None or len(page) < self.page_size:
                return out
            last = self._moment(page[-1])
            if lower is not None and last == lower:
                out.extend(await self._read_moment(lower, seen_at_lower))
                lower, seen_at_lower = lower + TICK, frozenset()
                continue
            lower, seen_at_lower = last, frozenset(d["id"] for d in page if self._moment(d) == last)

    async def _read_moment(self, moment: datetime, skip: frozenset[str]) -> list[Doc]:
        """Every record at one date, with a cursor (short-lived: it never outlives this one date)."""
        out: list[Doc] = []
        seen = set(skip)
        first = self._body(moment, moment + TICK, limit=self.page_size)
        body, restarts = first, 0
        while True:
            try:
                page, cursor = await self._search(body)
            except CloseAPIError as exc:
                if not cursor_refused(exc) or restarts >= CURSOR_RESTARTS:
                    raise
                body, restarts = first, restarts + 1  # read again; what was read is dropped
                continue
            fresh = [d for d in page if d["id"] not in seen]
            seen.update(d["id"] for d in fresh)
            out.extend(fresh)
            if cursor is None or not page:
                return out
            body = {**body, "cursor": cursor}

    async def read_all(self, n: int) -> list[Doc]:
        """Every record, read in n concurrent slices; a record seen twice (it moved while we read) keeps
        its latest version."""
        parts = await self.slices(n)
        pages = await asyncio.gather(*(self.read(p) for p in parts))
        latest: dict[str, Doc] = {}
        for doc in (d for page in pages for d in page):
            known = latest.get(doc["id"])
            if known is None or doc.get("date_updated", "") >= known.get("date_updated", ""):
                latest[doc["id"]] = doc
        return sorted(latest.values(), key=lambda d: (d.get(self.key) or "", d["id"]))


# ----------------------------------------------------------------------------- flattening


def flatten_by_type(kind: str, items: Sequence[Doc]) -> dict[str, str | None]:
    """`email_office`, `email_home`… : the first value of each type; unlisted types count as `other`."""
    known = FLAT_TYPES[kind]
    out: dict[str, str | None] = {f"{kind}_{t}": None for t in known}
    for item in items:
        item_type = (item.get("type") or "").lower()
        column = f"{kind}_{item_type if item_type in known else 'other'}"
        if out[column] is None:
            out[column] = item.get(kind)
    return out


class RowBuilder:
    """Turns search documents into rows of the export schemas."""

    def __init__(self, columns: Sequence[CustomColumn], key_field: str) -> None:
        self.columns = list(columns)
        self.key_field = key_field
        self.unconvertible = 0

    def custom(self, doc: Doc) -> Row:
        row: Row = {}
        for c in self.columns:
            value = doc.get(f"custom.{c.cf_id}")
            if value is None or value == "" or value == []:
                row[c.column] = None
                continue
            try:
                row[c.column] = (
                    [_convert(c.cf_type, v) for v in (value if isinstance(value, list) else [value])]
                    if c.multiple
                    else _convert(c.cf_type, value)
                )
            except (TypeError, ValueError):
                self.unconvertible += 1
                row[c.column] = None
        return row

    def lead(self, doc: Doc) -> Row:
        return {
            "id": doc["id"],
            "name": doc.get("name"),
            "status_id": doc.get("status_id"),
            "status_label": doc.get("status_label"),
            "company_id": _text(doc.get(f"custom.{self.key_field}")) if self.key_field else None,
            "date_created": parse_moment(doc["date_created"]),
            "date_updated": parse_moment(doc["date_updated"]),
            **self.custom(doc),
        }

    def contact(self, doc: Doc) -> Row:
        lists = {kind: doc.get(column) or [] for kind, column in LIST_COLUMNS.items()}
        row: Row = {
            "id": doc["id"],
            "lead_id": doc["lead_id"],
            "name": doc.get("name"),
            "title": doc.get("title"),
            "user_id": _text(doc.get(f"custom.{self.key_field}")) if self.key_field else None,
            "emails": [{"email": e["email"], "type": e.get("type") or ""} for e in lists["email"]],
            "phones": [
                {
                    "phone": p["phone"],
                    "phone_formatted": p.get("phone_formatted"),
                    "type": p.get("type") or "",
                }
                for p in lists["phone"]
            ],
            "urls": [{"url": u["url"], "type": u.get("type") or ""} for u in lists["url"]],
        }
        for kind, items in lists.items():
            row.update(flatten_by_type(kind, items))
        row["date_created"] = parse_moment(doc["date_created"])
        row["date_updated"] = parse_moment(doc["date_updated"])
        row.update(self.custom(doc))
        return row


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return _text(value[0]) if value else None
    return str(value)


def _convert(cf_type: str, value: Any) -> Any:
    if cf_type == "number":
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        return float(value)
    if cf_type == "date":
        return date.fromisoformat(str(value)[:10])
    if cf_type == "datetime":
        return parse_moment(str(value))
    return value if isinstance(value, str) else str(value)


# -------------------------------------------------------------------------------- writing


def write_table(rows: list[Row], schema: pa.Schema, path: Path, fmt: Format) -> Path:
    """Write rows to `path` atomically: a hidden temp file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        else:
            with tmp.open("wb") as fh:
                fastavro.writer(fh, fastavro.parse_schema(to_avro(schema)), rows, codec="deflate")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------- export


def field_groups(base: Sequence[str], custom: Sequence[str], key: str) -> list[list[str]]:
    """`_fields` lists of at most FIELDS_PER_SEARCH names that together name every field: the base
    fields with the first custom fields, then `id`, the key date and the next custom fields."""
    room = FIELDS_PER_SEARCH - len(base)
    groups = [[*base, *custom[:room]]]
    rest = list(custom[room:])
    head = ["id", key] if key in base else ["id"]
    step = FIELDS_PER_SEARCH - len(head)
    groups += [[*head, *rest[i : i + step]] for i in range(0, len(rest), step)]
    return groups


async def read_docs(
    client: CloseClient, object_type: str, key: str, groups: list[list[str]], request: ExportRequest
) -> list[Doc]:
    """Every record, read once per field group; the later groups' custom values joined by id."""
    passes = [
        await SearchPager(client, object_type, key, fields, request.updated_since, request.page_size).read_all(
            request.slices
        )
        for fields in groups
    ]
    docs = passes[0]
    for extra in passes[1:]:
        by_id = {d["id"]: d for d in extra}
        docs = [{**d, **by_id.get(d["id"], {})} for d in docs]
    return docs


def _check_key_field(cf_id: str, columns: Sequence[CustomColumn], what: str) -> None:
    if cf_id and cf_id not in {c.cf_id for c in columns}:
        raise ValueError(
            f"settings.{what} is {cf_id!r}, which is not one of this organisation's custom fields"
        )


async def export(client: CloseClient, request: ExportRequest) -> ExportResult:
    """Read all leads and contacts (date_updated ≥ updated_since if given) and write the two tables."""
    started = time.monotonic()
    lead_defs, contact_defs = await asyncio.gather(
        custom_field_definitions(client, "lead"), custom_field_definitions(client, "contact")
    )
    lead_columns, contact_columns = custom_columns(lead_defs), custom_columns(contact_defs)
    _check_key_field(request.company_id_field, lead_columns, "lead_custom_field_id_for_company_id")
    _check_key_field(request.user_id_field, contact_columns, "contact_custom_field_id_for_user_id")
    # A full export pages on date_created, which never moves; an incremental one must page on date_updated.
    key = "date_created" if request.updated_since is None else "date_updated"
    lead_groups = field_groups(LEAD_FIELDS, [f"custom.{c.cf_id}" for c in lead_columns], key)
    contact_groups = field_groups(CONTACT_FIELDS, [f"custom.{c.cf_id}" for c in contact_columns], key)
    lead_docs, contact_docs = await asyncio.gather(
        read_docs(client, "lead", key, lead_groups, request),
        read_docs(client, "contact", key, contact_groups, request),
    )
    leads = RowBuilder(lead_columns, request.company_id_field)
    contacts = RowBuilder(contact_columns, request.user_id_field)
    suffix = "parquet" if request.format == "parquet" else "avro"
    paths = [
        write_table(
            [leads.lead(d) for d in lead_docs],
            table_schema("leads", lead_columns),
            request.out_dir / f"leads.{suffix}",
            request.format,
        ),
        write_table(
            [contacts.contact(d) for d in contact_docs],
            table_schema("contacts", contact_columns),
            request.out_dir / f"contacts.{suffix}",
            request.format,
        ),
    ]
    return ExportResult(
        leads=len(lead_docs),
        contacts=len(contact_docs),
        paths=paths,
        seconds=time.monotonic() - started,
        counters=client.counters(),
        unconvertible=leads.unconvertible + contacts.unconvertible,
    )
