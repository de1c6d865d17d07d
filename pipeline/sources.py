"""The read stage: raw event payloads from files, Pub/Sub or Kafka, ready for ParseEvents.

Payloads are `bytes` (one JSON document as text: a JSON line, a Pub/Sub message, a Kafka value)
or `dict` (an Avro or Parquet row, already an event), each wrapped in a `Received` that says where it
was read (file and line or record, Pub/Sub message id, Kafka topic, partition and offset), so its dead
letter can be traced back to it. Nothing here judges an event: a line that is not JSON is passed on as
it is, and the parser dead-letters it.

An Avro/Parquet/compressed file that cannot be read (corrupt, truncated) does not fail the job:
the rows read before the damage are emitted, then one `str` payload "unreadable file <path>: <error>"
that is deliberately not JSON, so the parser dead-letters it with the path and the error, and the
`unreadable_files` counter counts it. Files with other extensions (`_SUCCESS`, `.crc`) are skipped
and counted in `skipped_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from closecrm.model import Origin, Received
from pipeline.avro_io import iter_avro_records, record_to_event
from pipeline.kafka_read import KafkaReadSettings, ReadKafkaPython

_LOG = logging.getLogger(__name__)

SourceKind = Literal["files", "pubsub", "kafka"]
KafkaReader = Literal["python", "java"]
KafkaCommit = Literal["finalize", "settled"]

JSON_LINES_EXTENSIONS = (".jsonl", ".json", ".ndjson")
COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".zst", ".deflate")


@dataclass(frozen=True)
class SourceOptions:
    """Where events come from. Only the fields of the chosen `source` are read.

    | field | source | meaning |
    |---|---|---|
    | source | all | "files", "pubsub" or "kafka" |
    | input | files | glob of .jsonl/.json/.ndjson (optionally .gz), .avro, .parquet files |
    | subscription / topic | pubsub | full path, `projects/P/subscriptions/S` or `projects/P/topics/T`; one of them |
    | timestamp_attribute | pubsub | attribute carrying the event time (RFC 3339 or epoch ms); default publish time |
    | id_attribute | pubsub | attribute Dataflow dedupes redeliveries on; ignored on the DirectRunner |
    | bootstrap_servers | kafka | `host:port[,host:port…]` |
    | kafka_topic | kafka | topic to read |
    | kafka_partitions_offsets | kafka | `{partition: first offset}`; the Python reader's bounded read only (default: each partition's start) |
    | kafka_consumer_config | kafka | extra consumer settings (security, SASL…), same keys for librdkafka and Java |
    | kafka_reader | kafka | "python" (a splittable DoFn over confluent-kafka) or "java" (Beam's ReadFromKafka) |
    | streaming | all | the job is a streaming one: the Python Kafka reader reads unbounded, from the group's offsets |
    | direct_runner | pubsub, kafka | the DirectRunner: it refuses Pub/Sub id labels, and its SDF runner resumes on a ProcessContinuation |
    | kafka_commit | kafka, streaming | "finalize": the reader commits in bundle finalization (durable on Dataflow, Flink); "settled": the job commits once each record's outcome is settled (Prism) |
    """

    source: SourceKind
    input: str | None = None
    subscription: str | None = None
    topic: str | None = None
    timestamp_attribute: str | None = None
    id_attribute: str | None = None
    bootstrap_servers: str | None = None
    kafka_topic: str | None = None
    kafka_partitions_offsets: Mapping[int, int] | None = None
    kafka_consumer_config: Mapping[str, str] = field(default_factory=dict)
    kafka_reader: KafkaReader = "python"
    streaming: bool = False
    direct_runner: bool = True
    kafka_commit: KafkaCommit = "finalize"

    def __post_init__(self) -> None:
        if self.source == "files" and not self.input:
            raise ValueError("--source files needs --input GLOB")
        if self.source == "pubsub" and bool(self.subscription) == bool(self.topic):
            raise ValueError("--source pubsub needs exactly one of --subscription PATH or --topic PATH")
        if self.source == "kafka":
            if not (self.bootstrap_servers and self.kafka_topic):
                raise ValueError("--source kafka needs --bootstrap-servers HOSTS and --kafka-topic NAME")
            if self.kafka_reader not in ("python", "java"):
                raise ValueError(f"unknown Kafka reader {self.kafka_reader!r}: use python or java")
            if self.kafka_partitions_offsets and (self.kafka_reader != "python" or self.streaming):
                raise ValueError(
                    "start offsets per partition are honoured only by the Python Kafka reader's bounded "
                    "read; a streaming read starts from the consumer group's committed offsets"
                )
        if self.source not in ("files", "pubsub", "kafka"):
            raise ValueError(f"unknown source {self.source!r}: use files, pubsub or kafka")


class ReadEvents(beam.PTransform):
    """Raw event payloads from the configured source (bounded for files and DirectRunner Kafka)."""

    def __init__(self, options: SourceOptions) -> None:
        super().__init__()
        self._options = options

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        readers = {"files": ReadEventFiles, "pubsub": ReadPubSubPayloads, "kafka": ReadKafkaPayloads}
        return pbegin | readers[self._options.source](self._options)


# --- files -------------------------------------------------------------------------------------


def file_format(path: str) -> str | None:
    """The format ("jsonl", "avro", "parquet") named by the file extension, compression ignored; else None."""
    name = path.lower()
    for suffix in COMPRESSION_EXTENSIONS:
        name = name.removesuffix(suffix)
    if name.endswith(JSON_LINES_EXTENSIONS):
        return "jsonl"
    if name.endswith(".avro"):
        return "avro"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def unreadable_file_payload(path: str, error: BaseException) -> str:
    """The payload standing for a file that could not be read: not JSON, so the parser dead-letters it."""
    return f"unreadable file {path}: {type(error).__name__}: {error}"


class _ReadFile(beam.DoFn):
    """Base of the per-format readers: turns a read error into one unreadable-file payload."""

    def __init__(self) -> None:
        self._unreadable = Metrics.counter("close_sync.sources", "unreadable_files")

    def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
        path = readable_file.metadata.path
        try:
            yield from self.read(readable_file)
        except Exception as error:  # one damaged file must not stop the job
            _LOG.warning("cannot read %s: %s", path, error)
            self._unreadable.inc()
            yield Received(unreadable_file_payload(path, error), Origin("file", path))

    def read(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
        raise NotImplementedError


class ReadJsonLines(_ReadFile):
    """Each non-blank line of a (possibly compressed) JSON-lines file, as bytes, with its line number."""

    def read(self, readable_file: fileio.ReadableFile) -> Iterator[Received]:
        path = readable_file.metadata.path
        with readable_file.open() as stream:
            # Beam's CompressedFile has readline() but is not iterable.
            for number, line in enumerate(iter(stream.readline, b""), start=1):
                line = line.strip()
                if line:
                    yield Received(line, Origin("line", path, number))


class ReadAvroRows(_ReadFile):
    """Each record of an Avro container file, as an event dict."""

    def read(self, readable_file: fileio.ReadableFile) -> Iterator[Received]:
        path = readable_file.metadata.path
        with readable_file.open(mime_type="application/octet-stream") as stream:
            for number, record in enumerate(iter_avro_records(stream), start=1):
                yield Received(record_to_event(record), Origin("record", path, number))


class ReadParquetRows(_ReadFile):
    """Each row of a Parquet file, as an event dict, one row group batch at a time."""

    def __init__(self, batch_size: int = 1024) -> None:
        super().__init__()
        self._batch_size = batch_size

    def read(self, readable_file: fileio.ReadableFile) -> Iterator[Received]:
        import pyarrow.parquet as pq

        path = readable_file.metadata.path
        number = 0
        with readable_file.open(mime_type="application/octet-stream") as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=self._batch_size):
                for row in batch.to_pylist():
                    number += 1
                    yield Received(record_to_event(row), Origin("record", path, number))


class SkipUnsupportedFile(beam.DoFn):
    """Counts and logs a matched file of no known format (`_SUCCESS`, checksums); emits nothing."""

    def __init__(self) -> None:
        self._skipped = Metrics.counter("close_sync.sources", "skipped_files")

    def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
        _LOG.warning("skipping %s: not .jsonl/.json/.ndjson, .avro or .parquet", readable_file.metadata.path)
        self._skipped.inc()
        return iter(())


FILE_READERS: dict[str, type[_ReadFile]] = {
    "jsonl": ReadJsonLines,
    "avro": ReadAvroRows,
    "parquet": ReadParquetRows,
}


class ReadAnyFile(beam.DoFn):
    """Each file through the reader of its format (`FILE_READERS`), or skipped and counted.

    One DoFn rather than a partition per format and a flatten: the flatten broke fusion on the local
    runner, which then held every line read in memory before the parser saw the first one.
    """

    def __init__(self) -> None:
        self._readers: dict[str, _ReadFile] = {fmt: reader() for fmt, reader in FILE_READERS.items()}
        self._skip = SkipUnsupportedFile()

    def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
        reader = self._readers.get(file_format(readable_file.metadata.path) or "")
        if reader is None:
            return self._skip.process(readable_file)
        return reader.process(readable_file)


class ReadEventFiles(beam.PTransform):
    """Payloads of every file the glob matches, each file read by the reader of its format."""

    def __init__(self, options: SourceOptions) -> None:
        super().__init__()
        self._pattern = options.input

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern)
            | "Spread files" >> beam.Reshuffle()
            | "Open" >> fileio.ReadMatches()
            | "Read files" >> beam.ParDo(ReadAnyFile())
        )


# --- Pub/Sub -----------------------------------------------------------------------------------


def received_message(message: Any) -> Any:
    """A Pub/Sub message's body, with its message id when the runner gives one."""
    message_id = getattr(message, "message_id", None)
    if not message_id:
        return message.data
    return Received(message.data, Origin("pubsub", str(message_id)))


class ReadPubSubPayloads(beam.PTransform):
    """Message bodies (bytes, with their message ids) from a Pub/Sub subscription or topic; unbounded."""

    def __init__(self, options: SourceOptions) -> None:
        super().__init__()
        self._options = options

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        opts = self._options
        # The DirectRunner refuses id_label; the pipeline's messageId dedupe covers redeliveries there.
        id_label = None if opts.direct_runner else opts.id_attribute
        return (
            pbegin
            | "Read Pub/Sub"
            >> beam.io.ReadFromPubSub(
                subscription=opts.subscription,
                topic=None if opts.subscription else opts.topic,
                timestamp_attribute=opts.timestamp_attribute,
                id_label=id_label,
                with_attributes=True,  # the message, whose id a dead letter names
            )
            | "Bodies" >> beam.Map(received_message)
        )


# --- Kafka -------------------------------------------------------------------------------------


class ReadKafkaPayloads(beam.PTransform):
    """Message values (bytes) of a Kafka topic: the Python reader (bounded, or unbounded when streaming),
    whose values carry their topic, partition and offset, or Beam's ReadFromKafka (values alone)."""

    def __init__(self, options: SourceOptions) -> None:
        super().__init__()
        self._options = options

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        opts = self._options
        config = kafka_consumer_config(opts)
        if opts.kafka_reader == "python":
            settings = KafkaReadSettings(
                unbounded=opts.streaming,
                start_offsets=opts.kafka_partitions_offsets,
                continuation="yield" if opts.direct_runner else "defer",
                commit=opts.kafka_commit,
            )
            label = "Read Kafka (unbounded)" if opts.streaming else "Read Kafka (bounded)"
            return pbegin | label >> ReadKafkaPython(config, opts.kafka_topic or "", settings)
        from apache_beam.io.kafka import ReadFromKafka

        return (
            pbegin
            | "Read Kafka"
            >> ReadFromKafka(
                consumer_config=config,
                topics=[opts.kafka_topic],
                timestamp_policy=ReadFromKafka.create_time_policy,
                commit_offset_in_finalize=True,
            )
            | "Values" >> beam.Map(lambda key_value: key_value[1])
        )


def kafka_consumer_config(options: SourceOptions) -> dict[str, str]:
    """Consumer settings shared by both readers; user settings win over the defaults."""
    return {
        "group.id": "close-sync",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
        **dict(options.kafka_consumer_config),
        "bootstrap.servers": options.bootstrap_servers or "",
    }
