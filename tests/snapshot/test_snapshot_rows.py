"""Rows → requests and schema checks: null cells drop out, warehouse types convert, drift is named per column."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from closecrm.events.parse import BadEvent
from closecrm.model import Settings
from closecrm.reverse_etl.snapshot import (
    SnapshotSpec,
    arrow_kind,
    avro_kind,
    check_schema,
    primary_key_of,
    request_for,
)

SPEC = SnapshotSpec(
    primary_key=("tenant", "user_id"),
    fields={"contact_user_id": "user_id", "contact_email": "email", "lead_name": "account"},
    custom_fields={"lead_custom_fields": {"cf_seats": "seats", "cf_since": "since"}},
    settings=Settings(),
)


def test_columns_are_the_key_then_the_mapped_ones_once() -> None:
    assert SPEC.columns == ("tenant", "user_id", "email", "account", "seats", "since")


def test_null_cells_are_no_value() -> None:
    request = request_for(SPEC, ("t", "u1", None, None, None, None), "k")
    assert request.contact_emails == () and request.lead_name is None and request.lead_custom_fields == {}
    assert request.contact_user_id == "u1"


def test_warehouse_types_become_json_values() -> None:
    request = request_for(SPEC, ("t", 42, "a@b.co", "Acme", Decimal("12"), dt.date(2024, 5, 1)), "k")
    assert request.contact_user_id == "42"
    assert request.lead_custom_fields == {"cf_seats": 12, "cf_since": "2024-05-01"}


def test_an_unusable_cell_raises_bad_event() -> None:
    with pytest.raises(BadEvent, match="invalid_email"):
        request_for(SPEC, ("t", "u", "not an email", None, None, None), "k")


def test_primary_keys_are_text_and_null_parts_make_none() -> None:
    assert primary_key_of(("only",), 1) == "only"
    assert primary_key_of(("t", 7, "x"), 2) == '["t",7]'
    assert primary_key_of(("t", None), 2) is None


def test_schema_problems_name_the_file_the_column_and_the_use() -> None:
    kinds = {"tenant": "string", "user_id": "float", "account": "struct", "seats": "integer", "since": "date"}
    problems = check_schema(SPEC, kinds, "f.parquet")
    assert "f.parquet: column 'email' (for contact_email) is missing" in problems
    assert any("'user_id' is float, which cannot become primary_key" in p for p in problems)
    assert any("'account' is struct, which cannot become lead_name" in p for p in problems)
    assert not any("'since'" in p or "'seats'" in p for p in problems)


def test_arrow_and_avro_types_map_to_kinds() -> None:
    assert arrow_kind(pa.large_string()) == "string"
    assert arrow_kind(pa.dictionary(pa.int32(), pa.string())) == "string"
    assert arrow_kind(pa.timestamp("us", tz="UTC")) == "timestamp"
    assert arrow_kind(pa.decimal128(10, 2)) == "decimal"
    assert avro_kind(["null", "long"]) == "integer"
    assert avro_kind({"type": "int", "logicalType": "date"}) == "date"
    assert avro_kind({"type": "long", "logicalType": "timestamp-micros"}) == "timestamp"
    assert avro_kind({"type": "enum", "name": "E", "symbols": ["a"]}) == "string"
    assert avro_kind(["null", "string", "long"]) == "union"
