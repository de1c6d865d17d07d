"""The diff, as pure functions and as the DiffSnapshot transform: applying A→B's diff to A's state gives B's fingerprints."""

from __future__ import annotations

import tempfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closecrm.model import Settings
from closecrm.reverse_etl.snapshot import (
    SnapshotSpec,
    bucket_of,
    buckets_of,
    classify,
    diff_bucket,
    diff_states,
    fingerprint,
    fingerprints,
    next_state,
    primary_key_of,
    primary_keys,
)
from transforms.snapshot import GONE, KEEP, DiffSnapshot, state_pairs, state_schema

SPEC = SnapshotSpec(
    primary_key=("id",), fields={"contact_user_id": "id", "contact_name": "name"}, settings=Settings()
)

keys = st.sampled_from([f"k{i}" for i in range(12)])
tables = st.dictionaries(keys, st.sampled_from(["a", "b", "c", None]), max_size=12)


def fingerprints_of(table: dict[str, str | None]) -> dict[str, bytes]:
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
    state_a, state_b = fingerprints_of(a), fingerprints_of(b)
    assert next_state(state_a, state_b, diff_states(state_b, state_a, full=full)) == state_b


@given(tables, tables, st.sets(keys))
def test_failed_keys_keep_what_they_had(a, b, failed) -> None:
    state_a, state_b = fingerprints_of(a), fingerprints_of(b)
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
@given(tables, tables, st.sampled_from([1, 3, 64]))
def test_diff_snapshot_in_beam_agrees_with_the_reference(a, b, buckets) -> None:
    state_a, state_b = fingerprints_of(a), fingerprints_of(b)
    kinds = diff_states(state_b, state_a)
    expected_next = next_state(state_a, state_b, kinds)
    with tempfile.TemporaryDirectory() as tmp:
        snap, state = _write(Path(tmp), b, state_a)
        with beam.Pipeline() as p:
            out = p | DiffSnapshot(SPEC, snap, "parquet", state, buckets=buckets)
            # Changes would be applied successfully: they take their new fingerprint.
            applied = out["changes"] | "Applied" >> beam.Map(lambda c: (c.key, c.fingerprint))
            kept = out[KEEP] | "KeptPairs" >> beam.FlatMap(state_pairs)  # KEEP carries state tables
            next_pairs = (applied, kept) | beam.Flatten()
            assert_that(next_pairs, equal_to(list(expected_next.items())), label="NextState")
            assert_that(out[GONE], equal_to([k for k, kind in kinds.items() if kind == "gone"]), label="Gone")
            kinds_seen = out["changes"] | "Kinds" >> beam.Map(lambda c: (c.key, c.kind))
            assert_that(
                kinds_seen,
                equal_to([(k, kind) for k, kind in kinds.items() if kind in ("new", "changed")]),
                label="Kinds",
            )


# ---------------------------------------------------------------------------- batches and buckets

dup_snapshots = st.lists(st.tuples(keys, st.sampled_from(["a", "b", "c", None])), max_size=16)


@given(dup_snapshots, tables, st.booleans())
def test_diff_bucket_agrees_with_classify_key_by_key(snapshot, a, full) -> None:
    state_a = fingerprints_of(a)
    rows = [(key, fingerprint(SPEC.digest, (key, name))) for key, name in snapshot]
    diff = diff_bucket(
        pa.array([k for k, _ in rows], pa.string()),
        pa.array([f for _, f in rows], pa.binary()),
        pa.array(list(state_a), pa.string()),
        pa.array(list(state_a.values()), pa.binary()),
        full=full,
    )
    by_key: dict[str, list[bytes]] = {}
    for key, fp in rows:
        by_key.setdefault(key, []).append(fp)
    expected = {
        key: classify(by_key.get(key, []), [state_a[key]] if key in state_a else [], full=full)
        for key in by_key.keys() | state_a.keys()
    }
    seen = {rows[i][0]: kind for i, kind, _ in diff.changes}
    assert seen == {k: kind for k, kind in expected.items() if kind in ("new", "changed", "resync")}
    assert all(prev == state_a.get(rows[i][0]) and rows[i][1] for i, _, prev in diff.changes)
    assert sorted(diff.gone) == sorted(k for k, kind in expected.items() if kind == "gone")
    assert set(diff.duplicates) == {k for k, kind in expected.items() if kind == "duplicate"}
    assert all(len(rs) == len(by_key[k]) for k, rs in diff.duplicates.items())
    kept = dict(zip(diff.keep_keys.to_pylist(), diff.keep_fingerprints.to_pylist(), strict=True))
    assert kept == {
        k: state_a[k] for k, kind in expected.items() if kind in ("unchanged", "duplicate") and k in state_a
    }
    assert diff.counts == {kind: list(expected.values()).count(kind) for kind in diff.counts}


def test_batch_keys_and_fingerprints_equal_the_per_row_ones() -> None:
    rows = [("t", 7, "x"), ("t", None, "y"), ("u", "8", None)]
    columns = list(zip(*rows, strict=True))
    assert primary_keys(columns, 2) == [primary_key_of(r, 2) for r in rows]
    assert primary_keys([[None, "a", 3]], 1) == [None, "a", "[3]"]
    assert fingerprints(SPEC.digest, rows) == [fingerprint(SPEC.digest, r) for r in rows]


def test_buckets_are_stable_across_processes() -> None:
    # crc32, not hash(): the same key lands in the same bucket in every worker and every run.
    assert bucket_of("u00000001", 128) == 72
    assert buckets_of(["u00000001", "é"], 7) == [bucket_of("u00000001", 7), bucket_of("é", 7)]


@pytest.mark.parametrize("buckets", [1, 4])
def test_duplicate_and_keyless_rows_are_dead_lettered_and_keep_their_state(tmp_path: Path, buckets) -> None:
    state = fingerprints_of({"k1": "a", "k2": "old", "k9": "z"})
    _, state_pattern = _write(tmp_path, {"k1": "a", "k2": "b"}, state)
    # A second file: with one bucket, its chunk joins the first file's in the same bucket.
    pq.write_table(
        pa.Table.from_pylist(
            [{"id": "k3", "name": "c"}, {"id": "k2", "name": "again"}, {"id": None}],
            schema=pa.schema([("id", pa.string()), ("name", pa.string())]),
        ),
        tmp_path / "snap2.parquet",
    )
    snap = str(tmp_path / "snap*.parquet")
    with beam.Pipeline() as p:
        out = p | DiffSnapshot(SPEC, snap, "parquet", state_pattern, buckets=buckets)
        assert_that(
            out["changes"] | "Kinds" >> beam.Map(lambda c: (c.key, c.kind, c.values)),
            equal_to([("k3", "new", ("k3", "c"))]),
            label="Changes",
        )
        assert_that(
            out[KEEP] | "Kept" >> beam.FlatMap(state_pairs),
            equal_to([("k1", state["k1"]), ("k2", state["k2"])]),
            label="Keep",
        )
        assert_that(out[GONE], equal_to(["k9"]), label="Gone")
        assert_that(
            out["dead"] | "Reasons" >> beam.Map(lambda d: (d.reason, d.event.get("name"))),
            equal_to(
                [
                    ("duplicate_primary_key", "b"),
                    ("duplicate_primary_key", "again"),
                    ("null_primary_key", None),
                ]
            ),
            label="Dead",
        )
