"""The export tables' schemas: fixed pyarrow columns mirrored by schemas/export_*.avsc, plus custom-field columns."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
NAMESPACE = "closesync.export"
CUSTOM_PREFIX = "custom_"

# Flattened columns, one per (kind, type): the first value of that type. Values whose type is not
# listed count as "other". Close's own types, plus "url" (Close's type for contact URLs) and
# "office" for URLs (what Close assigns when a URL is written without a type).
FLAT_TYPES: dict[str, tuple[str, ...]] = {
    "email": ("office", "home", "direct", "mobile", "other"),
    "phone": ("office", "mobile", "home", "direct", "fax", "other"),
    "url": ("url", "office", "home", "other"),
}
LIST_COLUMNS = {"email": "emails", "phone": "phones", "url": "urls"}


def _item_list(*fields: pa.Field) -> pa.DataType:
    return pa.list_(pa.field("item", pa.struct(list(fields)), nullable=False))


def _text(name: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, pa.string(), nullable=nullable)


LEADS_BASE = pa.schema(
    [
        _text("id", nullable=False),
        _text("name"),
        _text("status_id"),
        _text("status_label"),
        _text("company_id"),
        pa.field("date_created", TIMESTAMP, nullable=False),
        pa.field("date_updated", TIMESTAMP, nullable=False),
    ],
    metadata={
        "avro_name": "ExportLead",
        "doc": "One Close lead; custom_<slug> columns follow, one per lead custom field.",
    },
)

CONTACTS_BASE = pa.schema(
    [
        _text("id", nullable=False),
        _text("lead_id", nullable=False),
        _text("name"),
        _text("title"),
        _text("user_id"),
        pa.field("emails", _item_list(_text("email", False), _text("type", False)), nullable=False),
        pa.field(
            "phones",
            _item_list(_text("phone", False), _text("phone_formatted"), _text("type", False)),
            nullable=False,
        ),
        pa.field("urls", _item_list(_text("url", False), _text("type", False)), nullable=False),
        *[_text(f"{kind}_{t}") for kind, types in FLAT_TYPES.items() for t in types],
        pa.field("date_created", TIMESTAMP, nullable=False),
        pa.field("date_updated", TIMESTAMP, nullable=False),
    ],
    metadata={
        "avro_name": "ExportContact",
        "doc": "One Close contact; emails/phones/urls as lists and flattened by type (first value); "
        "custom_<slug> columns follow, one per contact custom field.",
    },
)

AVSC_FILES = {"leads": "export_leads.avsc", "contacts": "export_contacts.avsc"}
BASE_SCHEMAS = {"leads": LEADS_BASE, "contacts": CONTACTS_BASE}

# Close custom field types -> column types; anything else (text, choices, user, contact…) is text.
_CF_TYPES: dict[str, pa.DataType] = {"number": pa.float64(), "date": pa.date32(), "datetime": TIMESTAMP}


@dataclass(frozen=True)
class CustomColumn:
    """One custom field as a column: `custom_<slug of its name>`, typed from its definition."""

    cf_id: str
    name: str
    column: str
    cf_type: str
    multiple: bool

    @property
    def field(self) -> pa.Field:
        value = _CF_TYPES.get(self.cf_type, pa.string())
        return pa.field(
            self.column, pa.list_(pa.field("item", value, nullable=False)) if self.multiple else value
        )


def slug(name: str) -> str:
    """`Company ID` -> `company_id`: lowercase ASCII letters and digits, words joined by `_`."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "_", text).strip("_") or "field"
    return text


def custom_columns(definitions: Iterable[dict[str, Any]]) -> list[CustomColumn]:
    """Columns for custom field definitions, ordered by column name so runs are stable.

    Two names with the same slug (`Plan`, `plan!`) get `_2`, `_3`… in the order of their ids.
    """
    taken: dict[str, int] = {}
    out = []
    for d in sorted(definitions, key=lambda d: (slug(d["name"]), d["id"])):
        base = CUSTOM_PREFIX + slug(d["name"])
        taken[base] = taken.get(base, 0) + 1
        column = base if taken[base] == 1 else f"{base}_{taken[base]}"
        out.append(
            CustomColumn(d["id"], d["name"], column, d.get("type", "text"), bool(d.get("accepts_multiple_values")))
        )
    return sorted(out, key=lambda c: c.column)


def table_schema(table: str, columns: Sequence[CustomColumn]) -> pa.Schema:
    """The full schema of one export: the fixed columns, then one column per custom field."""
    base = BASE_SCHEMAS[table]
    clash = {c.column for c in columns} & set(base.names)
    if clash:
        raise ValueError(f"custom field column(s) clash with fixed columns: {', '.join(sorted(clash))}")
    schema = base
    for column in columns:
        schema = schema.append(column.field)
    return schema


# ------------------------------------------------------------------------------- Avro mirror


def to_avro(schema: pa.Schema) -> dict[str, Any]:
    """The Avro record schema for a pyarrow schema made of the types above."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    record: dict[str, Any] = {"type": "record", "name": meta["avro_name"], "namespace": NAMESPACE}
    if "doc" in meta:
        record["doc"] = meta["doc"]
    record["fields"] = [_avro_field(f) for f in schema]
    return record


def _avro_field(field: pa.Field) -> dict[str, Any]:
    avro_type = _avro_type(field.type, field.name)
    if field.nullable:
        return {"name": field.name, "type": ["null", avro_type], "default": None}
    return {"name": field.name, "type": avro_type}


def _avro_type(t: pa.DataType, name: str) -> Any:
    if t == pa.string():
        return "string"
    if t == pa.float64():
        return "double"
    if t == pa.date32():
        return {"type": "int", "logicalType": "date"}
    if t == TIMESTAMP:
        return {"type": "long", "logicalType": "timestamp-micros"}
    if pa.types.is_list(t):
        item = t.value_field
        items = _avro_type(item.type, f"{name}_item")
        return {"type": "array", "items": ["null", items] if item.nullable else items}
    if pa.types.is_struct(t):
        return {"type": "record", "name": name, "fields": [_avro_field(f) for f in t]}
    raise TypeError(f"no Avro mapping for {t} ({name})")


def from_avro(record: dict[str, Any]) -> pa.Schema:
    """The pyarrow schema an Avro record schema of the shapes above describes (to check the mirror)."""
    meta = {"avro_name": record["name"]}
    if "doc" in record:
        meta["doc"] = record["doc"]
    return pa.schema([_arrow_field(f["name"], f["type"]) for f in record["fields"]], metadata=meta)


def _arrow_field(name: str, avro_type: Any) -> pa.Field:
    nullable = isinstance(avro_type, list) and "null" in avro_type
    if isinstance(avro_type, list):
        (avro_type,) = [t for t in avro_type if t != "null"]
    return pa.field(name, _arrow_type(avro_type), nullable=nullable)


def _arrow_type(avro_type: Any) -> pa.DataType:
    if avro_type == "string":
        return pa.string()
    if avro_type == "double":
        return pa.float64()
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "date":
            return pa.date32()
        if logical == "timestamp-micros":
            return TIMESTAMP
        if avro_type["type"] == "array":
            item = _arrow_field("item", avro_type["items"])
            return pa.list_(item)
        if avro_type["type"] == "record":
            return pa.struct([_arrow_field(f["name"], f["type"]) for f in avro_type["fields"]])
    raise TypeError(f"no pyarrow mapping for Avro type {avro_type!r}")


def write_avsc_files(directory: Path) -> list[Path]:
    """Regenerate schemas/export_*.avsc from the pyarrow schemas: python -m closecrm.reverse_etl.export_schema"""
    written = []
    for table, filename in AVSC_FILES.items():
        path = directory / filename
        path.write_text(json.dumps(to_avro(BASE_SCHEMAS[table]), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "schemas"
    for path in write_avsc_files(target):
        print(f"wrote {path}")
