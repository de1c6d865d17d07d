"""BucketRows on a batch whose every primary key is null: every row dead-lettered, no chunk, no crash."""

from __future__ import annotations

import pyarrow as pa
import pytest
from apache_beam.pvalue import TaggedOutput

from closecrm.model import Settings
from closecrm.reverse_etl.snapshot import SnapshotSpec
from transforms.deadletter import DEAD
from transforms.snapshot import BucketRows

SPEC = SnapshotSpec(
    primary_key=("user_id",),
    fields={"contact_user_id": "user_id", "contact_email": "email"},
    custom_fields={"lead_custom_fields": {"cf_since": "since"}},
    settings=Settings(),
)


def bucket(batch: object) -> tuple[list[object], list[object]]:
    fn = BucketRows(SPEC, buckets=8)
    fn.setup()
    chunks, dead = [], []
    for out in fn.process(batch):
        if isinstance(out, TaggedOutput):
            assert out.tag == DEAD
            dead.append(out.value)
        else:
            chunks.append(out)
    return chunks, dead


@pytest.mark.parametrize("key_type", [pa.string(), pa.int64(), pa.date32()])
def test_a_parquet_row_group_without_any_key_is_all_dead_letters(key_type: pa.DataType) -> None:
    table = pa.table(
        {
            "user_id": pa.array([None, None], key_type),
            "email": pa.array(["a@example.com", None], pa.string()),
            "since": pa.array([None, None], pa.date32()),
        }
    )
    chunks, dead = bucket(table)
    assert chunks == []
    assert [letter.reason for letter in dead] == ["null_primary_key", "null_primary_key"]


def test_an_avro_batch_without_any_key_is_all_dead_letters() -> None:
    chunks, dead = bucket([(None, "a@example.com", None)])
    assert chunks == [] and [letter.reason for letter in dead] == ["null_primary_key"]


def test_a_parquet_row_group_with_some_keys_keeps_their_rows() -> None:
    table = pa.table(
        {
            "user_id": pa.array([None, "u1"], pa.string()),
            "email": pa.array(["a@example.com", "b@example.com"], pa.string()),
            "since": pa.array([None, None], pa.date32()),
        }
    )
    chunks, dead = bucket(table)
    assert [key for _, chunk in chunks for key in chunk.keys.to_pylist()] == ["u1"]
    assert len(dead) == 1
