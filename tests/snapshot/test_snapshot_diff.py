"""The diff, as pure functions and as the DiffSnapshot transform: applying A→B's diff to A's state gives B's fingerprints."""

from __future__ import annotations

import tempfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closecrm.model import Settings
from closecrm.snapshot import SnapshotSpec, classify, diff_states, fingerprint, next_state
from transforms.snapshot import GONE, KEEP, DiffSnapshot, state_schema

SPEC = SnapshotSpec(
    primary_key=("id",), fields={"contact_user_id": "id", "contact_name": "name"}, settings=Settings()
)

keys = st.sampled_from([f"k{i}" for i in range(12)])
tables = st.dictionaries(keys, st.sampled_from(["a", "b", "c", None]), max_size=12)


def fingerprints(table: dict[str, str | None]) -> dict[str, bytes]:
    return {key: fingerprint(SPEC.digest, (key, name)) for key, name in table.items()}


def test_classify_names_each_fate() -> None:
    assert classify([b"x"], []) == "new"
    assert classify([b"x"], [b"y"]) == "changed"
    assert classify([b"x"], [b"x"]) == "unchanged"
    assert classify([b"x"], [b"x"], full=True) == "resync"
    assert classify([], [b"x"]) == "gone"
    assert classify([b"x", b"y"], [b"x"]) == "duplicate"


def test_fingerprint_changes_with_the_mapping_not_only_the_cells() -> None:
    other = SnapshotSpec(primary_key=("id",), fields={"contact_user_id": "id", "contact_title": "name"})
    assert fingerprint(SPEC.digest, ("k", "a")) != fingerprint(other.digest, ("k", "a"))
    assert fingerprint(SPEC.digest, ("k", "a")) == fingerprint(SPEC.digest, ("k", "a"))


@given(tables, tables, st.booleans())
def test_applying_the_diff_of_a_to_b_to_a_state_yields_b(a, b, full) -> None:
    state_a, state_b = fingerprints(a), fingerprints(b)
    assert next_state(state_a, state_b, diff_states(state_b, state_a, full=full)) == state_b


@given(tables, tables, st.sets(keys))
def test_failed_keys_keep_what_they_had(a, b, failed) -> None:
    state_a, state_b = fingerprints(a), fingerprints(b)
    kinds = diff_states(state_b, state_a)
    after = next_state(state_a, state_b, kinds, frozenset(failed))
    for key in state_b:
        if key in failed:
            assert after.get(key) == state_a.get(key)
        else:
            assert after[key] == state_b[key]
    assert set(after) <= set(state_b)


def _write(directory: Path, table: dict[str, str | None], state: dict[str, bytes]) -> tuple[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"id": k, "name": v} for k, v in table.items()]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("name", pa.string())])),
        directory / "snap.parquet",
    )
    pq.write_table(
        pa.table({"key": list(state), "fingerprint": list(state.values())}, schema=state_schema()),
        directory / "state-0.parquet",
    )
    return str(directory / "snap.parquet"), str(directory / "state-*.parquet")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, tables)
def test_diff_snapshot_in_beam_agrees_with_the_reference(a, b) -> None:
    state_a, state_b = fingerprints(a), fingerprints(b)
    kinds = diff_states(state_b, state_a)
    expected_next = next_state(state_a, state_b, kinds)
    with tempfile.TemporaryDirectory() as tmp:
        snap, state = _write(Path(tmp), b, state_a)
        with beam.Pipeline() as p:
            out = p | DiffSnapshot(SPEC, snap, "parquet", state)
            # Changes would be applied successfully: they take their new fingerprint.
            applied = out["changes"] | "Applied" >> beam.Map(lambda c: (c.key, c.fingerprint))
            next_pairs = (applied, out[KEEP]) | beam.Flatten()
            assert_that(next_pairs, equal_to(list(expected_next.items())), label="NextState")
            assert_that(out[GONE], equal_to([k for k, kind in kinds.items() if kind == "gone"]), label="Gone")
            kinds_seen = out["changes"] | "Kinds" >> beam.Map(lambda c: (c.key, c.kind))
            assert_that(
                kinds_seen,
                equal_to([(k, kind) for k, kind in kinds.items() if kind in ("new", "changed")]),
                label="Kinds",
            )
