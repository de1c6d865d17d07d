"""ReadEvents over files: JSON lines (plain and gzip), Avro, Parquet, mixed globs and damaged input; each
payload with the file and line (or record) it was read from."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from closecrm.model import Received
from pipeline.avro_io import write_events_avro
from pipeline.sources import ReadEvents, SourceOptions, file_format


def event(n: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"m{n}",
        "userId": f"u{n}",
        "traits": {"email": f"u{n}@example.com"},
    }


def line(n: int) -> bytes:
    return json.dumps(event(n)).encode()


def read(pattern: str) -> tuple[BeamTestPipeline, beam.PCollection]:
    """The payloads read (what the parser gets, each unwrapped from its `Received`)."""
    pipeline, received = read_received(pattern)
    return pipeline, received | beam.Map(_payload)


def read_received(pattern: str) -> tuple[BeamTestPipeline, beam.PCollection]:
    pipeline = BeamTestPipeline(runner="DirectRunner")
    return pipeline, pipeline | ReadEvents(SourceOptions(source="files", input=pattern))


def _payload(received: Received) -> Any:
    assert isinstance(received, Received), received
    return received.payload


def _where(received: Received) -> tuple[str, dict[str, Any]]:
    source = received.origin.to_json()
    return Path(source.pop("file")).name, source


def write_jsonl(path: Path, numbers: range, extra: tuple[bytes, ...] = ()) -> None:
    lines = [line(n) for n in numbers] + list(extra)
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_parquet(path: Path, numbers: range) -> None:
    pq.write_table(pa.Table.from_pylist([event(n) for n in numbers]), path)


def test_json_lines_are_emitted_as_bytes_one_per_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", range(3))
    (tmp_path / "b.ndjson").write_bytes(line(3) + b"\r\n\n" + line(4))
    pipeline, payloads = read(str(tmp_path / "*"))
    assert_that(payloads, equal_to([line(n) for n in range(5)]))
    pipeline.run()


def test_each_payload_says_which_file_and_line_or_record_it_was_read_from(tmp_path: Path) -> None:
    (tmp_path / "b.ndjson").write_bytes(line(3) + b"\r\n\n" + line(4) + b"\n")  # blank line 2 counts
    write_jsonl(tmp_path / "c.jsonl.gz", range(5, 7))
    write_events_avro(tmp_path / "d.avro", [event(n) for n in range(7, 9)])
    write_parquet(tmp_path / "e.parquet", range(9, 12))
    (tmp_path / "f.avro").write_bytes(b"Obj\x01 this is not an avro container")
    pipeline, received = read_received(str(tmp_path / "*"))
    assert_that(
        received | beam.Map(_where),
        equal_to(
            [
                ("b.ndjson", {"line": 1}),
                ("b.ndjson", {"line": 3}),
                ("c.jsonl.gz", {"line": 1}),
                ("c.jsonl.gz", {"line": 2}),
                ("d.avro", {"record": 1}),
                ("d.avro", {"record": 2}),
                ("e.parquet", {"record": 1}),
                ("e.parquet", {"record": 2}),
                ("e.parquet", {"record": 3}),
                ("f.avro", {}),  # a file that cannot be read: named, no line
            ]
        ),
    )
    pipeline.run()


def test_gzipped_json_lines_are_decompressed_by_extension(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "events.json.gz", range(4))
    pipeline, payloads = read(str(tmp_path / "*.gz"))
    assert_that(payloads, equal_to([line(n) for n in range(4)]))
    pipeline.run()


def test_avro_records_are_emitted_as_event_dicts(tmp_path: Path) -> None:
    write_events_avro(tmp_path / "events.avro", [event(n) for n in range(3)])
    pipeline, payloads = read(str(tmp_path / "*.avro"))
    assert_that(payloads, equal_to([event(n) for n in range(3)]))
    pipeline.run()


def test_parquet_rows_are_emitted_as_event_dicts_with_nested_traits(tmp_path: Path) -> None:
    write_parquet(tmp_path / "events.parquet", range(3))
    pipeline, payloads = read(str(tmp_path / "*.parquet"))
    assert_that(payloads, equal_to([event(n) for n in range(3)]))
    pipeline.run()


def test_glob_mixing_formats_reads_each_file_with_its_format_and_skips_others(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part-0.jsonl", range(0, 2))
    write_jsonl(tmp_path / "part-1.jsonl.gz", range(2, 4))
    write_events_avro(tmp_path / "part-2.avro", [event(n) for n in range(4, 6)])
    write_parquet(tmp_path / "part-3.parquet", range(6, 8))
    (tmp_path / "_SUCCESS").write_text("")
    pipeline, payloads = read(str(tmp_path / "*"))
    expected = [line(n) for n in range(4)] + [event(n) for n in range(4, 8)]
    assert_that(payloads, equal_to(expected))
    pipeline.run()


def test_line_that_is_not_json_is_passed_on_raw_for_the_parser_to_dead_letter(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "events.jsonl", range(2), extra=(b"not json {", b"\xff\xfe binary"))
    pipeline, payloads = read(str(tmp_path / "*.jsonl"))
    assert_that(payloads, equal_to([line(0), line(1), b"not json {", b"\xff\xfe binary"]))
    pipeline.run()


def unreadable_payloads_for(names: list[str]) -> Callable[[list[Any]], None]:
    def check(payloads: list[Any]) -> None:
        texts = [p for p in payloads if isinstance(p, str)]
        if len(texts) != len(names) or not all(
            any(t.startswith("unreadable file ") and name in t for t in texts) for name in names
        ):
            raise BeamAssertException(f"expected one unreadable-file payload per {names}, got {texts}")
        for text in texts:
            with pytest.raises(ValueError):
                json.loads(text)
        if sum(isinstance(p, dict) for p in payloads) != 2:
            raise BeamAssertException(f"the good Avro file's 2 events are missing: {payloads}")

    return check


def test_corrupt_avro_parquet_and_gzip_files_become_unreadable_file_payloads_not_a_crash(
    tmp_path: Path,
) -> None:
    write_events_avro(tmp_path / "good.avro", [event(0), event(1)])
    (tmp_path / "bad.avro").write_bytes(b"Obj\x01 this is not an avro container")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"\x1f\x8b not really gzip")
    pipeline, payloads = read(str(tmp_path / "*"))
    assert_that(payloads, unreadable_payloads_for(["bad.avro", "bad.parquet", "bad.jsonl.gz"]))
    pipeline.run()


def test_truncated_avro_file_keeps_the_records_before_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "cut.avro"
    write_events_avro(path, [event(n) for n in range(2000)], codec="null")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    pipeline, payloads = read(str(path))
    assert_that(payloads | beam.Map(_kind) | beam.combiners.Count.PerElement(), _some_events_then_one_text)
    pipeline.run()


def _kind(payload: Any) -> str:
    return "event" if isinstance(payload, dict) else "unreadable"


def _some_events_then_one_text(counts: list[tuple[str, int]]) -> None:
    by_kind = dict(counts)
    if by_kind.get("unreadable") != 1 or not 0 < by_kind.get("event", 0) < 2000:
        raise BeamAssertException(
            f"expected the readable records and one unreadable-file payload, got {by_kind}"
        )


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("gs://b/x/events.jsonl", "jsonl"),
        ("/d/events.JSON.gz", "jsonl"),
        ("e.ndjson.bz2", "jsonl"),
        ("e.avro", "avro"),
        ("e.parquet", "parquet"),
        ("_SUCCESS", None),
        ("e.csv", None),
    ],
)
def test_file_format_comes_from_the_extension(path: str, fmt: str | None) -> None:
    assert file_format(path) == fmt


def test_files_source_needs_an_input_glob() -> None:
    with pytest.raises(ValueError, match="--input"):
        SourceOptions(source="files")
