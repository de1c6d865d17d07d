"""Segment events as Avro records: the SegmentEvent schema, writing event files, reading records back."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any, BinaryIO

import fastavro

# Nested objects travel as JSON text: one flat schema then fits every event type and every warehouse.
JSON_TEXT_FIELDS = ("traits", "context", "properties", "integrations")


@cache
def event_schema() -> dict[str, Any]:
    """The parsed SegmentEvent schema (the packaged copy of schemas/event.avsc)."""
    text = resources.files("pipeline.schemas").joinpath("event.avsc").read_text(encoding="utf-8")
    return fastavro.parse_schema(json.loads(text))


def _field_names() -> tuple[str, ...]:
    return tuple(f["name"] for f in event_schema()["fields"])


def _as_text(value: Any) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value if isinstance(value, str) else str(value)


def event_to_avro_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """Map a Segment event onto the schema's fields; keys the schema does not name are dropped.

    Object fields become JSON text (a value that is already a string is kept as given); other
    non-string values (numeric user ids, datetimes) become strings. Raises ValueError without `type`.
    """
    if not event.get("type"):
        raise ValueError("a SegmentEvent needs a non-empty 'type'")
    record: dict[str, Any] = {}
    for name in _field_names():
        value = event.get(name)
        if value is None:
            record[name] = None
        elif name in JSON_TEXT_FIELDS and not isinstance(value, str):
            record[name] = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        else:
            record[name] = _as_text(value)
    return record


def record_to_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """Turn an Avro or Parquet row back into an event dict the parser understands.

    Nulls are dropped, JSON-text object fields are decoded (text that is not JSON is kept, so the
    parser can reject it with the original value), and dates become ISO-8601 strings.
    """
    event: dict[str, Any] = {}
    for name, value in record.items():
        if value is None:
            continue
        if name in JSON_TEXT_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        elif isinstance(value, dt.datetime | dt.date):
            value = value.isoformat()
        event[name] = value
    return event


def write_events_avro(
    path: str | os.PathLike[str], events: Iterable[Mapping[str, Any]], codec: str = "deflate"
) -> int:
    """Write events to an Avro container file with the SegmentEvent schema; returns the count."""
    written = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal written
        for event in events:
            yield event_to_avro_record(event)
            written += 1

    with open(path, "wb") as out:
        fastavro.writer(out, event_schema(), records(), codec=codec)
    return written


def iter_avro_records(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """Records of an Avro container read from an open binary stream, with the writer's schema."""
    yield from fastavro.reader(stream)


def read_avro_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of an Avro container file, as written (object fields still JSON text)."""
    with open(path, "rb") as stream:
        yield from iter_avro_records(stream)
