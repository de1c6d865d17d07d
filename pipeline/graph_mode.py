"""Which graph a run gets: streaming when its read is unbounded, batch when it ends; and which Kafka reader.

| source | runner | `--streaming` | graph | Kafka reader |
|---|---|---|---|---|
| pubsub | any | any | streaming | |
| kafka | DirectRunner, Prism | no | batch: the Python reader up to the end offsets seen at start | python |
| kafka | DirectRunner, Prism | yes | streaming: the Python reader, unbounded; offsets committed once settled | python |
| kafka | Dataflow, Flink, others | any | streaming (the read never ends); offsets committed on finalization | java (`ReadFromKafka`), or python |
| files | any | no | batch | |
| files | any | yes | streaming | |

A combination outside the table is refused before anything runs.

Where offsets are committed follows the runner: Dataflow and Flink finalize a bundle once its output is
durably committed, so the reader commits there; Prism (and so the DirectRunner, which hands streaming
Kafka to it) finalizes right after the read's bundle and keeps its output in memory, so there the job
commits a partition's offset only once every earlier record's outcome is settled (`pipeline.kafka_commit`).
"""

from __future__ import annotations

from dataclasses import replace

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.sources import SourceOptions

DIRECT_RUNNERS = ("directrunner", "bundlebaseddirectrunner", "switchingdirectrunner")
LOCAL_RUNNERS = (*DIRECT_RUNNERS, "prismrunner")


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    return str(runner or "DirectRunner").rsplit(".", 1)[-1].lower()


def runs_locally(options: PipelineOptions) -> bool:
    """The DirectRunner or Prism: one machine, no Java expansion service, no durable checkpoints."""
    return runner_name(options) in LOCAL_RUNNERS


def graph_mode(source: SourceOptions, options: PipelineOptions, kafka_reader: str | None = None) -> SourceOptions:
    """``source`` as this run reads it: its ``streaming`` flag and its Kafka reader decided.

    ``options`` are Beam's (the runner, and Beam's own ``--streaming`` flag); ``kafka_reader`` is the
    user's ``--kafka-reader`` choice, None for the runner's default.
    """
    local = runs_locally(options)
    direct = runner_name(options) in DIRECT_RUNNERS
    if kafka_reader is not None and source.source != "kafka":
        raise ValueError(f"--kafka-reader applies to --source kafka only, not --source {source.source}")
    if kafka_reader == "java" and local:
        raise ValueError(
            "--kafka-reader java is Beam's ReadFromKafka, which needs Beam's Java expansion service and "
            "runs on Dataflow or Flink; on the DirectRunner and Prism use the Python reader (the default)"
        )
    streaming = bool(options.view_as(StandardOptions).streaming) or source.source == "pubsub"
    if source.source == "kafka":
        streaming = streaming or not local
        reader = kafka_reader or ("python" if local else "java")
        commit = "settled" if local and streaming and reader == "python" else "finalize"
        return replace(source, streaming=streaming, kafka_reader=reader, direct_runner=direct, kafka_commit=commit)
    return replace(source, streaming=streaming, direct_runner=direct)
