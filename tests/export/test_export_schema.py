"""schemas/export_*.avsc and the pyarrow schemas describe the same tables."""

import json
from pathlib import Path

import fastavro
import pyarrow as pa
import pytest

from closecrm.reverse_etl.export_schema import (
    AVSC_FILES,
    BASE_SCHEMAS,
    FLAT_TYPES,
    CustomColumn,
    custom_columns,
    from_avro,
    table_schema,
    to_avro,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("table", sorted(AVSC_FILES))
def test_avsc_file_and_pyarrow_schema_agree(table):
    avsc = json.loads((SCHEMAS / AVSC_FILES[table]).read_text())
    # Regenerate with `python -m closecrm.reverse_etl.export_schema` after changing the pyarrow schema.
    assert avsc == to_avro(BASE_SCHEMAS[table])
    assert from_avro(avsc).equals(BASE_SCHEMAS[table], check_metadata=True)
    fastavro.parse_schema(avsc)


def test_contacts_have_a_flattened_column_per_known_type():
    names = BASE_SCHEMAS["contacts"].names
    assert {"email_office", "email_home", "phone_mobile", "phone_office", "url_url"} <= set(names)
    assert all(f"{kind}_other" in names for kind in FLAT_TYPES)


def test_custom_columns_append_typed_and_round_trip_through_avro():
    defs = [
        {"id": "cf_1", "name": "Seats", "type": "number"},
        {"id": "cf_2", "name": "Renewal", "type": "date"},
        {"id": "cf_3", "name": "Seen", "type": "datetime"},
        {"id": "cf_4", "name": "Tags", "type": "choices", "accepts_multiple_values": True},
        {"id": "cf_5", "name": "Owner", "type": "user"},
    ]
    schema = table_schema("leads", custom_columns(defs))
    assert schema.names[: len(BASE_SCHEMAS["leads"])] == BASE_SCHEMAS["leads"].names
    assert schema.field("custom_seats").type == pa.float64()
    assert schema.field("custom_renewal").type == pa.date32()
    assert schema.field("custom_seen").type == pa.timestamp("us", tz="UTC")
    assert schema.field("custom_tags").type == pa.list_(pa.field("item", pa.string(), nullable=False))
    assert schema.field("custom_owner").type == pa.string() and schema.field("custom_owner").nullable
    avro = to_avro(schema)
    fastavro.parse_schema(avro)
    assert from_avro(avro).equals(schema, check_metadata=True)


def test_a_custom_column_named_like_a_fixed_column_is_refused():
    # custom_columns() prefixes every name with `custom_`, so this guards hand-made columns only.
    with pytest.raises(ValueError, match="clash"):
        table_schema("leads", [CustomColumn("cf_x", "Name", "name", "text", False)])
