"""No DoFn of the job raises on data: each one driven directly, not through a runner, with hostile elements.

Every `beam.DoFn` class defined in `transforms.*` and `pipeline.*` has a driver in `DRIVERS` or a reason
in `EXEMPT`. A driver takes the instance the job itself builds (found in the graph `pipeline.assemble.build`
makes, or the snapshot job's transforms make, and shipped through Beam's pickler as a runner ships it to a
worker) and runs it as a runner would: setup, start_bundle, process per element (with per-key state for
stateful DoFns), finish_bundle, then a bundle that fires the timers it set, then teardown. Its elements
have the shape the stage gets in the job, made by running hostile input through the upstream DoFns the
same way: wire payloads -> Identify -> ShardedFold(shared_message_ids) and ShardedFold(FoldPersons: each
payload parsed, the first of each messageId, mapped, collapsed per person) -> _Explode -> the writer
(bounded input; unbounded input parses with _Parse, maps with _Map and suppresses repeats with
_SuppressIdentical); and warehouse rows ->
_ReadAvroBatches -> BucketRows -> DiffBucket -> _ToPending.

Every output is taken as the runner takes it (a TimestampedValue becomes a WindowedValue, finish_bundle
must emit WindowedValues, the value crosses Beam's default coder), so an output that would fail the
bundle there fails here. Stages with DEAD and LEDGER outputs account for every event: it is passed on,
dead-lettered (one DEAD letter and one dead LEDGER entry), or skipped (one skipped LEDGER entry).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import inspect
import io
import json
import pkgutil
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam import typehints
from apache_beam.coders import registry
from apache_beam.internal import pickler
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.core import ProcessContinuation, _StateDoFnParam, _TimerDoFnParam
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

import pipeline
import transforms
from closecrm.events.parse import Event
from closecrm.model import DeadLetter, Origin, Outcome, Received, read_of
from closecrm.reverse_etl.snapshot import ACCEPTS
from closecrm.wiring import KeySource
from pipeline import snapshot_job
from pipeline.assemble import build
from pipeline.avro_io import event_schema, event_to_avro_record
from pipeline.config import JobConfig, parse_config
from pipeline.kafka_commit import CommitSettledOffsets, SettleEvents, route
from pipeline.kafka_read import (
    KafkaPartitionRange,
    PlanKafkaPartitions,
    ReadKafkaPartition,
    ReadKafkaPartitionUnbounded,
    _Offsets,
    _PartitionWatermarks,
)
from pipeline.runjob import RunRequest, shape_for
from pipeline.sources import (
    ReadAnyFile,
    ReadAvroRows,
    ReadJsonLines,
    ReadParquetRows,
    SkipUnsupportedFile,
    SourceOptions,
    _ReadFile,
)
from tests.fuzz.budget import budget
from tests.fuzz.strategies import (
    as_wire,
    dumps,
    emails,
    hostile_values,
    phones,
    timestamps,
    urls,
    wire_events,
)
from tests.fuzz.test_fuzz_domain import CONFIG
from tests.pipeline.helpers import sim_config
from tests.reliability.rel_helpers import identify
from transforms.collapse import (
    SUPPRESSED,
    Pending,
    _CollapsePanes,
    _Explode,
    _SuppressIdentical,
)
from transforms.deadletter import DEAD, AppendLines, dead_letter_json, letter_event
from transforms.dedupe import DropRedeliveriesWithTtl, dedupe_bucket
from transforms.kafka_tally import TALLY, KafkaClaim, ended, from_letter_line
from transforms.keying import lead_identity, shard_of
from transforms.ledger import APPLIED, LEDGER, SKIPPED, _CountFinal, _event_id, count_final_statuses, worst
from transforms.ledger import DEAD as LEDGER_DEAD
from transforms.mapping import _Map, carried, event_person
from transforms.outcomes import EmitOutcomes, ledger_status
from transforms.parse import _Parse
from transforms.per_person import (
    FoldPersons,
    Identify,
    _message_id,
    _person,
    message_and_person,
    shared_message_ids,
)
from transforms.sharded import PackShards, _FoldShard, unpack
from transforms.snapshot import (
    GONE,
    KEEP,
    BucketRows,
    Change,
    ChangesToRequests,
    DiffBucket,
    DiffSnapshot,
    StateCorrupt,
    WriteFingerprints,
    _CountState,
    _ReadAvroBatches,
    _ReadStateFile,
    _Rebatch,
    _state_table,
    _ToPending,
    bucket_state,
    settled_fingerprint,
    state_schema,
)
from transforms.writer import ApplyBatches, ApplyBatchesStreaming, lead_of

# ---------------------------------------------------------------------------- Beam's runtime, in memory
#
# A faithful minimal stand-in for what a runner hands a stateful DoFn: per key, the state cells and
# timers it declares, with the methods Beam's runtime objects expose (bag: read/add/clear; value:
# read/write/clear; combining value: read/add/clear; timer: set/clear). Values are kept encoded by the
# spec's coder, as the runner keeps them, so a value that coder cannot encode fails here as it would there.


class BagState(userstate.BagRuntimeState):
    def __init__(self, spec: userstate.BagStateSpec) -> None:
        self._coder = spec.coder
        self._items: list[bytes] = []

    def read(self) -> list[Any]:
        return [self._coder.decode(blob) for blob in self._items]

    def add(self, value: Any) -> None:
        self._items.append(self._coder.encode(value))

    def clear(self) -> None:
        self._items = []


class ValueState(userstate.ReadModifyWriteRuntimeState):
    def __init__(self, spec: userstate.ReadModifyWriteStateSpec) -> None:
        self._coder = spec.coder
        self._blob: bytes | None = None

    def read(self) -> Any:
        return None if self._blob is None else self._coder.decode(self._blob)

    def write(self, value: Any) -> None:
        self._blob = self._coder.encode(value)

    def clear(self) -> None:
        self._blob = None


class CombiningState(userstate.CombiningValueRuntimeState):
    def __init__(self, spec: userstate.CombiningValueStateSpec) -> None:
        self._fn = spec.combine_fn
        self._coder = spec.coder  # the accumulator's
        self.clear()

    def read(self) -> Any:
        return self._fn.extract_output(self._coder.decode(self._acc))

    def add(self, value: Any) -> None:
        self._acc = self._coder.encode(self._fn.add_input(self._coder.decode(self._acc), value))

    def clear(self) -> None:
        self._acc = self._coder.encode(self._fn.create_accumulator())


class Timer(userstate.RuntimeTimer):
    """When the timer is due, None when not set; due timers fire in the bundle after the elements'."""

    def __init__(self) -> None:
        super().__init__()
        self.due: Timestamp | None = None

    def set(self, timestamp: Any, dynamic_timer_tag: str = "") -> None:
        self.due = Timestamp.of(timestamp)

    def clear(self, dynamic_timer_tag: str = "") -> None:
        self.due = None


def runtime_state(spec: userstate.StateSpec) -> Any:
    if isinstance(spec, userstate.BagStateSpec):
        return BagState(spec)
    if isinstance(spec, userstate.ReadModifyWriteStateSpec):
        return ValueState(spec)
    if isinstance(spec, userstate.CombiningValueStateSpec):
        return CombiningState(spec)
    raise NotImplementedError(f"no in-memory state for {spec!r}")


class Key:
    """The state and timers of one key, passed to a DoFn method's StateParam/TimerParam/WindowParam
    arguments as the runner passes them."""

    def __init__(self, fn: beam.DoFn) -> None:
        state_specs, timer_specs = userstate.get_dofn_specs(fn)
        self.states = {spec: runtime_state(spec) for spec in state_specs}
        self.timers = {spec: Timer() for spec in timer_specs}

    def call(self, method: Callable[..., Any], *args: Any, **side: Any) -> Any:
        kwargs: dict[str, Any] = dict(side)
        for name, param in inspect.signature(method).parameters.items():
            default = param.default
            if isinstance(default, _StateDoFnParam):
                kwargs[name] = self.states[default.state_spec]
            elif isinstance(default, _TimerDoFnParam):
                kwargs[name] = self.timers[default.timer_spec]
            elif default is beam.DoFn.WindowParam:
                kwargs[name] = GlobalWindow()
        return method(*args, **kwargs)

    def fire(self, fn: beam.DoFn) -> Iterable[Any]:
        """Each due timer's callback, earliest first (a callback may set its timer again: not re-fired)."""
        due = sorted((t.due, spec.name, spec, t) for spec, t in self.timers.items() if t.due is not None)
        for _, _, spec, timer in due:
            timer.due = None
            yield from self.call(spec._attached_callback.__get__(fn)) or ()


# ---------------------------------------------------------------------------- driving a DoFn

ANY_CODER = registry.get_coder(typehints.Any)  # what a PCollection without a type hint is encoded with


@dataclass
class Emitted:
    main: list[Any] = field(default_factory=list)
    tagged: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    @property
    def dead(self) -> list[DeadLetter]:
        return self.tagged[DEAD]

    @property
    def ledger(self) -> list[tuple[str, str]]:
        return self.tagged[LEDGER]

    def take(self, results: Iterable[Any] | None, *, finishing: bool = False) -> Emitted:
        for result in results or ():
            tag, value = (result.tag, result.value) if isinstance(result, TaggedOutput) else (None, result)
            if finishing:
                assert isinstance(value, WindowedValue), (
                    f"finish_bundle emitted a bare {type(value).__name__}"
                )
            if isinstance(value, TimestampedValue):  # what the runner's output handler does with it
                value = WindowedValue(value.value, value.timestamp, (GlobalWindow(),))
            if isinstance(value, WindowedValue):
                value = value.value
            value = ANY_CODER.decode(ANY_CODER.encode(value))
            (self.main if tag is None else self.tagged[tag]).append(value)
        return self

    def extend(self, other: Emitted) -> None:
        self.main.extend(other.main)
        for tag, values in other.tagged.items():
            self.tagged[tag].extend(values)


@dataclass
class Run:
    per_element: list[Emitted]  # what process() emitted for each element
    later: Emitted  # what finish_bundle and the timers emitted

    @property
    def all(self) -> Emitted:
        out = Emitted()
        for part in [*self.per_element, self.later]:
            out.extend(part)
        return out


def shipped(fn: beam.DoFn) -> beam.DoFn:
    """A copy of the job's instance, made the way a runner gets it to a worker."""
    return pickler.loads(pickler.dumps(fn))


def drive(fn: beam.DoFn, elements: Iterable[Any], *, keyed: bool = False, side: dict[str, Any] | None = None) -> Run:
    """One bundle of elements through a shipped copy of ``fn``, then one bundle firing the timers it set
    (``side``: the side inputs its process gets by name)."""
    fn = shipped(fn)
    fn.setup()
    try:
        fn.start_bundle()
        keys: dict[Any, Key] = {}
        per_element = []
        for element in elements:
            key = element[0] if keyed else None
            if key not in keys:
                keys[key] = Key(fn)
            per_element.append(Emitted().take(keys[key].call(fn.process, element, **(side or {}))))
        later = Emitted().take(fn.finish_bundle(), finishing=True)
        if any(t.due is not None for k in keys.values() for t in k.timers.values()):
            fn.start_bundle()
            for k in keys.values():
                later.take(k.fire(fn))
            later.take(fn.finish_bundle(), finishing=True)
    finally:
        fn.teardown()
    return Run(per_element, later)


def grouped(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[Any, list[Any]]]:
    """What a GroupByKey hands the next stage."""
    groups: dict[Any, list[Any]] = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return list(groups.items())


def writable(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as WriteDeadLetters writes it: one UTF-8 JSON line with a reason."""
    line = dead_letter_json(letter)
    assert "\n" not in line
    record = json.loads(line.encode("utf-8").decode("utf-8"))
    assert isinstance(record["reason"], str) and record["reason"], record
    return record


def accounted(item: Emitted, *, passed: int | None = None) -> str:
    """The one way an event ended at a stage with DEAD and LEDGER outputs: passed, dead or skipped."""
    for letter in item.dead:
        writable(letter)
    ledger = Counter(status for _, status in item.ledger)
    if item.main and not item.dead and not ledger:
        assert passed is None or len(item.main) == passed
        return "passed"
    if not item.main and len(item.dead) == 1 and ledger == {LEDGER_DEAD: 1}:
        return "dead"
    if not item.main and not item.dead and ledger == {SKIPPED: 1}:
        return "skipped"
    raise AssertionError(f"an event ended in none or several ways: {item}")


# ---------------------------------------------------------------------------- the job's own instances

OWN_MODULES = ("transforms", "pipeline")
SNAPSHOT_FIELDS = {
    "contact_user_id": "user_id",
    "contact_email": "email",
    "contact_phone": "phone",
    "contact_url": "website",
    "contact_name": "full_name",
    "lead_company_id": "account_id",
    "lead_name": "account_name",
    "lead_custom_fields": {"cf_plan": "plan"},
    "contact_custom_fields": {"cf_tags": "tags"},
}
SNAPSHOT_CONFIGS = {
    name: parse_config(
        {
            "settings": {
                "lead_custom_field_id_for_company_id": "cf_co",
                "contact_custom_field_id_for_user_id": "cf_u",
            },
            "snapshot": {"primary_key": key, "fields": SNAPSHOT_FIELDS},
        }
    )
    for name, key in {"one key": ["user_id"], "two keys": ["account_id", "user_id"]}.items()
}
NOWHERE = "http://127.0.0.1:9/"  # never called: only the writer's drivers talk to Close (the simulator)


class _Collect(PipelineVisitor):
    def __init__(self) -> None:
        self.fns: dict[type, list[beam.DoFn]] = defaultdict(list)

    def visit_transform(self, node: Any) -> None:
        fn = getattr(node.transform, "fn", None)
        if isinstance(fn, beam.DoFn) and type(fn).__module__.split(".")[0] in OWN_MODULES:
            self.fns[type(fn)].append(fn)


def _dofns(p: beam.Pipeline) -> dict[type, list[beam.DoFn]]:
    collect = _Collect()
    p.visit(collect)
    return dict(collect.fns)


def event_job_dofns(
    config: JobConfig, request: RunRequest, streaming: bool = False
) -> dict[type, list[beam.DoFn]]:
    """The DoFn instances of the event job's graph as `pipeline.runjob.launch` builds it locally."""
    p = beam.Pipeline(options=PipelineOptions(streaming=streaming))
    build(p, shape_for(config, request, streaming, local=True))
    return _dofns(p)


SOURCES = {
    "files": SourceOptions(source="files", input="/nonexistent/*.jsonl"),
    "pubsub": SourceOptions(source="pubsub", subscription="projects/fuzz-project/subscriptions/events"),
    "kafka": SourceOptions(source="kafka", bootstrap_servers="127.0.0.1:9", kafka_topic="events"),
    "kafka-streaming": SourceOptions(
        source="kafka", bootstrap_servers="127.0.0.1:9", kafka_topic="events", streaming=True
    ),
    # a streaming Kafka run on Prism: offsets committed once each record is settled
    "kafka-settled": SourceOptions(
        source="kafka", bootstrap_servers="127.0.0.1:9", kafka_topic="events", streaming=True,
        direct_runner=False, kafka_commit="settled",
    ),  # fmt: skip
}


@functools.cache
def job_dofn(cls: type, source: str = "files") -> beam.DoFn:
    """The job's instance of ``cls``: files and Kafka sources run bounded, Pub/Sub and streaming Kafka
    streaming."""
    request = RunRequest(
        source=SOURCES[source],
        close_url=NOWHERE,
        key_source=KeySource(),
        dead_letter_dir="/nonexistent/dead",
        audit_log="/nonexistent/audit.jsonl",
    )
    return event_job_dofns(CONFIG, request, streaming=source in ("pubsub", "kafka-streaming", "kafka-settled"))[cls][0]


# The key each ShardedFold of the job places its items by, per fold (a ShardedFold packs each of its inputs
# with a pack DoFn of its own, all alike).
FOLD_KEYS = {FoldPersons: _person, shared_message_ids: _message_id, count_final_statuses: _event_id}


@functools.cache
def job_fold(fold: Callable[..., Any]) -> tuple[beam.DoFn, beam.DoFn]:
    """A pack DoFn and the fold DoFn of the job's ShardedFold (bounded input) whose fold is ``fold``."""
    request = RunRequest(source=SOURCES["files"], close_url=NOWHERE, key_source=KeySource())
    fns = event_job_dofns(CONFIG, request)
    # the job may bind the fold's options (functools.partial) or make it an instance of a class
    (fold_fn,) = [f for f in fns[_FoldShard] if (role := getattr(f._fold, "func", f._fold)) is fold or type(role) is fold]
    packs = [p for p in fns[PackShards] if p._key is FOLD_KEYS[fold]]
    assert packs
    return packs[0], fold_fn


def through_fold(fold: Callable[..., Any], items: list[Any], **side: Any) -> Run:
    """Bounded input through the job's ShardedFold with ``fold``: packed per bundle, grouped, folded."""
    pack, fold_fn = job_fold(fold)
    return drive(fold_fn, grouped(drive(pack, items).all.main), side=side)


def identified(raws: list[Any]) -> list[Any]:
    """Bounded input: Identify."""
    return drive(job_dofn(Identify), raws).all.main


def owners_of(items: list[Any]) -> dict[str, str]:
    """The side input of the per-person fold: the owner of each messageId several people share."""
    return dict(through_fold(shared_message_ids, [message_and_person(item) for item in items]).all.main)


def per_person(raws: list[Any]) -> Run:
    """Bounded input's one pass (transforms.per_person) over the payloads that make events: each placed
    by its person, the owners of messageIds several people share, then each shard of people parsed,
    deduplicated, mapped and collapsed."""
    items = identified(raws)
    return through_fold(FoldPersons, items, owners=owners_of(items))


@functools.cache
def snapshot_dofn(cls: type, config_name: str = "one key", full: bool = False) -> beam.DoFn:
    """The snapshot job's instance of ``cls``: its transforms, given what `snapshot_job.build` gives them."""
    spec = snapshot_job.spec_for(SNAPSHOT_CONFIGS[config_name])
    p = beam.Pipeline()
    diff = p | "DiffSnapshot" >> DiffSnapshot(
        spec,
        "/nonexistent/rows-*.avro",
        "avro",
        "/nonexistent/state-*.parquet",
        full=full,
        buckets=snapshot_job.SnapshotRequest(input="", state="").buckets,
    )
    _ = diff["changes"] | "ChangesToRequests" >> ChangesToRequests(spec)
    _ = diff[KEEP] | "WriteState" >> WriteFingerprints("/nonexistent/out")
    return _dofns(p)[cls][0]


def discovered_dofns() -> set[type]:
    """Every DoFn class defined in the job's modules."""
    found = set()
    for package in (transforms, pipeline):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, beam.DoFn) and cls.__module__ == module.__name__:
                    found.add(cls)
    return found


# ---------------------------------------------------------------------------- hostile input

good_events = st.builds(identify, st.integers(0, 6), st.integers(0, 2), st.integers(0, 3))
poisoned_events = st.builds(
    lambda event, trait, value: {**event, "traits": {**event["traits"], trait: value}},
    good_events,
    st.sampled_from(["email", "phone", "website", "name", "title", "company", "plan", "custom"]),
    st.one_of(emails, phones, urls, timestamps, hostile_values),
)
FORMS = st.sampled_from(["dict", "text", "bytes"])
payloads = st.one_of(
    wire_events(),
    st.builds(as_wire, good_events, FORMS),
    st.builds(as_wire, poisoned_events, FORMS),
)
streams = st.lists(payloads, min_size=1, max_size=8)


# ---------------------------------------------------------------------------- upstream, through the job's DoFns


def parsed(raws: list[Any]) -> list[Event]:
    """_Parse (unbounded input; bounded input parses inside the per-person fold)."""
    return drive(job_dofn(_Parse, "pubsub"), raws).all.main


def collapsed(raws: list[Any]) -> list[tuple[str, Any]]:
    return per_person(raws).all.main


def pendings(raws: list[Any]) -> list[Pending]:
    return drive(job_dofn(_Explode), collapsed(raws)).all.main


def event_ids(items: Iterable[Any]) -> Counter[str]:
    return Counter(i for item in items for i in item.request.event_ids)


# ---------------------------------------------------------------------------- parse and dedupe


@budget(80)
@given(streams)
def test_parse_accounts_for_every_payload(raws):
    """Unbounded input: each payload is passed on as one event, or dead-lettered or skipped."""
    run = drive(job_dofn(_Parse, "pubsub"), raws)
    for item in run.per_element:
        accounted(item, passed=1)
    assert not run.later.main and not run.later.tagged
    assert all(isinstance(item.main[0], Event) for item in run.per_element if item.main)


@budget(60)
@given(streams)
def test_identify_places_every_payload_by_the_person_its_parse_names(raws):
    """Bounded input: each payload is handed on once, with the person and messageId its event has."""
    run = drive(job_dofn(Identify), raws)
    parse = job_dofn(_Parse, "pubsub")
    for raw, item in zip(raws, run.per_element, strict=True):
        parsed_ = drive(parse, [raw]).all
        if item.main:  # handed on to the fold, which parses it as _Parse does
            assert len(item.main) == 1 and not item.tagged
            person, message_id, read = item.main[0]
            for event in parsed_.main:
                assert (person, message_id) == (event_person(event), event.message_id)
                assert read == (event.received, event.origin)
        else:  # no event: dead-lettered here, as _Parse dead-letters it
            assert accounted(item) == "dead" and not parsed_.main and len(parsed_.dead) == 1
            assert item.dead[0].reason == parsed_.dead[0].reason
    assert not run.later.main and not run.later.tagged


# Ledger keys of the parse's own dead letters (`transforms.parse.dead_raw`): a hash of the payload and a uuid.
PARSE_DEAD_KEY = re.compile(r"^raw:([0-9a-f]{24}|unprintable):[0-9a-f]{32}$")


def fold_endings(raws: list[Any]) -> tuple[list[Event], Any, Counter[str], Counter[str], int]:
    """Identify and the per-person fold of ``raws``, and what the fold did with each messageId
    (`_message_ids_ended`), less what its parse ended on its own (dead payloads, opted-out events),
    which must be what _Parse ends:
    (the events parsed, the fold's outputs, messageIds in requests, messageIds ended on their own, copies
    dropped)."""
    parse = drive(job_dofn(_Parse, "pubsub"), raws).all
    placed = drive(job_dofn(Identify), raws).all
    out = through_fold(FoldPersons, placed.main, owners=owners_of(placed.main)).all
    requested, own, dropped = _message_ids_ended(out)
    parse_dead = Counter(k for k in own if PARSE_DEAD_KEY.match(k))
    opted_out = Counter(k for k, status in parse.ledger if status == SKIPPED)
    # every payload _Parse dead-letters is dead-lettered once: where it is placed, or in the fold
    assert sum(parse_dead.values()) + len(placed.dead) == len(parse.dead)
    assert own - parse_dead >= opted_out
    return parse.main, out, requested, own - parse_dead - opted_out, dropped


def _message_ids_ended(out: Any) -> tuple[Counter[str], Counter[str], int]:
    """What the per-person fold did with each messageId: in a request (once per person whose requests
    carry it), ended on its own (a dead or skipped LEDGER entry under its id), and the copies dropped."""
    requested = Counter(i for person, requests in out.main for i in {i for r, _ in requests for i in r.event_ids})
    own = Counter(k for k, _ in out.ledger if not k.startswith("dup:"))
    dropped = [s for k, s in out.ledger if k.startswith("dup:")]
    assert all(status == SKIPPED for status in dropped)
    return requested, own, len(dropped)


@budget(40)
@given(streams)
def test_per_person_fold_passes_one_copy_of_each_message_id(raws):
    events, out, requested, own, dropped = fold_endings(raws)
    held = [e.message_id for e in events]
    assert dropped == len(held) - len(set(held))
    # each messageId goes on once: its requests (all of one person), or one entry of its own
    assert set(requested) | set(own) == set(held) and not set(requested) & set(own)
    assert all(n == 1 for n in requested.values()) and all(n == 1 for n in own.values())
    assert len(out.dead) == sum(1 for _, status in out.ledger if status == LEDGER_DEAD)


@budget(40)
@given(streams)
def test_dedupe_with_ttl_passes_or_skips_each_event(raws):
    events = drive(job_dofn(_Parse, "pubsub"), raws).all.main
    run = drive(
        job_dofn(DropRedeliveriesWithTtl, "pubsub"),
        [(dedupe_bucket(e.message_id), e) for e in events],
        keyed=True,
    )
    endings = Counter(accounted(item, passed=1) for item in run.per_element)
    assert endings["passed"] == len({e.message_id for e in events})
    assert endings["passed"] + endings["skipped"] == len(events) and not run.later.main


# ---------------------------------------------------------------------------- map and collapse


@budget(60)
@given(streams)
def test_map_accounts_for_every_event(raws):
    events = parsed(raws)
    run = drive(job_dofn(_Map, "pubsub"), events)  # unbounded input maps in its own stage
    for event, item in zip(events, run.per_element, strict=True):
        if accounted(item) == "passed":
            for person, (request, raw) in item.main:
                assert person and event.message_id in request.event_ids and raw == carried(event)
                assert isinstance(raw, Received) and raw.payload == event.received
                shown, _ = letter_event(raw)  # what a later stage's dead letter would show of it
                json.dumps(shown, default=str).encode("utf-8")


def _ids_by_person(keyed: Iterable[tuple[str, tuple[Any, Any]]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for person, (request, _) in keyed:
        out[person].update(request.event_ids)
    return dict(out)


def _collapsed_ids(out: Iterable[tuple[str, Any]]) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = defaultdict(set)
    for person, requests in out:
        for request, events in requests:
            ids[person].update(request.event_ids)
            assert all(isinstance(e, Received) for e in events)
    return dict(ids)


@budget(40)
@given(streams)
def test_per_person_fold_keeps_every_event_id_of_every_person(raws):
    pack, _ = job_fold(FoldPersons)
    items = identified(raws)
    packs = drive(pack, items).all.main
    assert sorted(repr(read_of(x)) for _, blob in packs for x in unpack(blob)) == sorted(
        repr(read) for _, _, read in items
    )  # every payload placed, packed as read
    events, out, requested, own, _ = fold_endings(raws)
    # a person's requests carry ids of the events mapped for that person, and each kept event's all
    every = _ids_by_person(drive(job_dofn(_Map, "pubsub"), events).all.main)
    for person, ids in _collapsed_ids(out.main).items():
        assert ids <= every[person]
    assert set(requested) | set(own) == {e.message_id for e in events}


def mapped(raws: list[Any]) -> list[tuple[str, tuple[Any, Any]]]:
    """Unbounded input: parsed, the first copy of each messageId, then _Map."""
    first = list({e.message_id: e for e in reversed(parsed(raws))}.values())[::-1]
    return drive(job_dofn(_Map, "pubsub"), first).all.main


@budget(40)
@given(streams)
def test_collapse_panes_emit_every_event_id_of_every_person_when_the_pane_fires(raws):
    keyed = mapped(raws)
    run = drive(job_dofn(_CollapsePanes, "pubsub"), keyed, keyed=True)
    assert not run.all.tagged
    assert _collapsed_ids(run.later.main) == _ids_by_person(keyed)


@budget(40)
@given(streams, st.sampled_from(["files", "pubsub"]))
def test_explode_makes_a_pending_per_collapsed_request(raws, source):
    groups = collapsed(raws)
    out = drive(job_dofn(_Explode, source), groups).all
    assert [p.request for p in out.main] == [r for _, requests in groups for r, _ in requests]
    for p in out.main:
        assert len(p.events) <= len(p.request.event_ids) and all(isinstance(e, Received) for e in p.events)


# ---------------------------------------------------------------------------- suppress, settle, ledger


@budget(40)
@given(streams)
def test_suppress_identical_sends_or_suppresses_each_request(raws):
    items = pendings(raws)
    fn = job_dofn(_SuppressIdentical, "pubsub")  # unbounded input only
    replayed = [(p.person, p) for p in items for _ in range(2)]  # each followed by an identical copy
    run = drive(fn, replayed, keyed=True)
    for item in run.per_element:
        assert len(item.main) + len(item.tagged[SUPPRESSED]) == 1 and not item.dead and not item.ledger
    suppressed = [p for item in run.per_element for p, _ in item.tagged[SUPPRESSED]]
    assert event_ids(run.all.main) + event_ids(suppressed) == event_ids(p for _, p in replayed)
    assert len(suppressed) >= len(items)


OUTCOMES = st.sampled_from(
    [
        Outcome(kind="unchanged", branch="identical_to_last_applied"),
        Outcome(kind="created"),
        Outcome(kind="skipped", reason="not_allowed"),
        Outcome(kind="failed", reason="http_400", http_status=400, error_body={"error": "\ud800"}),
    ]
)


def settle(items: list[Pending], outcomes: list[Outcome]) -> Run:
    """The job's settling of requests and their outcomes (EmitOutcomes: unbounded input's suppressed
    requests; the bounded writer settles what it applies with the same `emit_outcome`)."""
    return drive(job_dofn(EmitOutcomes, "pubsub"), list(zip(items, outcomes, strict=False)))


def check_settled(run: Run) -> None:
    """Each (Pending, Outcome): itself passed on, a LEDGER entry per event id, a DEAD letter iff failed."""
    out = run.all
    expected = Counter((i, ledger_status(o)) for p, o in out.main for i in p.request.event_ids)
    assert Counter(out.ledger) == expected
    failed = [p for p, o in out.main if o.kind == "failed"]
    assert Counter(tuple(d.event_ids) for d in out.dead) == Counter(
        tuple(p.request.event_ids) for p in failed
    )
    for letter in out.dead:
        assert writable(letter)["stage"] == "upsert"


@budget(40)
@given(streams, st.data())
def test_settle_suppressed_ends_each_event_of_each_request(raws, data):
    items = pendings(raws)
    outcomes = [data.draw(OUTCOMES) for _ in items]
    run = settle(items, outcomes)
    assert [p.request for p, _ in run.all.main] == [p.request for p in items]
    check_settled(run)


def ledger_entries(raws: list[Any], outcomes: Callable[[int], list[Outcome]]) -> list[tuple[str, str]]:
    """The job's LEDGER outputs for ``raws``: parse, dedupe, map and the writer's outcomes."""
    placed = drive(job_dofn(Identify), raws).all  # what makes no event ends here
    items = placed.main
    folded = through_fold(FoldPersons, items, owners=owners_of(items))  # the rest is parsed in the fold
    pendings_ = drive(job_dofn(_Explode), folded.all.main).all.main
    settled = settle(pendings_, outcomes(len(pendings_)))
    return [*placed.ledger, *folded.all.ledger, *settled.all.ledger]


@budget(50)
@given(streams, st.data())
def test_ledger_settles_every_payload_read_exactly_once(raws, data):
    entries = ledger_entries(raws, lambda n: [data.draw(OUTCOMES) for _ in range(n)])
    finals: dict[str, list[str]] = defaultdict(list)
    for event_id, status in entries:
        finals[event_id].append(status)
    counts = through_fold(count_final_statuses, entries).all.main
    totals = Counter()
    for status, n in counts:
        totals[status] += n
    assert totals == Counter(worst(statuses) for statuses in finals.values())
    assert sum(totals.values()) == len(raws)  # one final status per payload read
    streamed = drive(job_dofn(_CountFinal, "pubsub"), entries).all.main
    assert Counter(streamed) == Counter(entries)
    assert {status for _, status in entries} <= {APPLIED, SKIPPED, LEDGER_DEAD}


@functools.cache
def streaming_dead_letter_writer(dead_dir: str) -> beam.DoFn:
    fns = event_job_dofns(CONFIG, _request(SOURCES["pubsub"], dead_dir), streaming=True)[AppendLines]
    letters = [fn for fn in fns if Path(fn._path).name.startswith("dead-letters")]
    assert len({fn._path for fn in letters}) == 1  # each stage's letters, appended where made, to one file
    return letters[0]  # dead letters go to one file, appended line by line


@budget(30)
@given(streams)
def test_append_lines_writes_each_dead_letter_as_one_json_line(tmp_path, raws):
    parsed_ = drive(job_dofn(_Parse, "pubsub"), raws).all
    letters = parsed_.dead + drive(job_dofn(_Map, "pubsub"), parsed_.main).all.dead
    lines = [dead_letter_json(letter) for letter in letters]
    fn = streaming_dead_letter_writer(str(tmp_path / "dead"))
    path = Path(fn._path)
    path.unlink(missing_ok=True)
    assert drive(fn, lines).all.main == lines
    written = path.read_bytes().decode("utf-8").splitlines() if path.exists() else []
    assert written == lines and all(json.loads(line)["reason"] for line in written)


def _request(source: SourceOptions, dead_dir: str, close_url: str = NOWHERE, **extra: Any) -> RunRequest:
    return RunRequest(
        source=source, close_url=close_url, key_source=KeySource(), dead_letter_dir=dead_dir, **extra
    )


# ---------------------------------------------------------------------------- the writer, against the simulator


@pytest.mark.integration
@budget(20)
@given(raws=streams, mode=st.sampled_from(["batch", "streaming", "dry run"]))
def test_writer_ends_every_request_with_one_outcome_against_close(
    sim, tmp_path_factory, monkeypatch, raws, mode
):
    sim.reset()
    workdir = tmp_path_factory.mktemp("writer")
    config, _ = sim_config(sim, workdir, {"pipeline": {"batch_size": 3, "flush_seconds": 1.0}})
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    streaming = mode == "streaming"
    request = _request(
        SOURCES["pubsub" if streaming else "files"],
        str(workdir / "dead"),
        sim.base_url,
        dry_run=mode == "dry run",
    )
    shape = shape_for(config, request, streaming, local=True)
    fns = event_job_dofns(config, request, streaming)
    (fn,) = fns[ApplyBatchesStreaming if streaming else ApplyBatches]
    items = pendings(raws)
    if streaming:
        keyed = [(shard_of(lead_identity(p.request), shape.shards), p) for p in items]
    else:  # bounded input reaches the writer in packs, through the job's own packer
        (pack,) = [f for f in fns[PackShards] if f._key is lead_of]
        keyed = drive(pack, items).all.main
    run = drive(fn, keyed, keyed=True)
    out = run.all
    assert sorted(p.request.event_ids for p, _ in out.main) == sorted(p.request.event_ids for p in items)
    check_settled(run)
    if mode == "dry run":
        assert not sim.contacts() and not sim.leads()


# ---------------------------------------------------------------------------- sources

JSONL_FORMS = ["jsonl", "json.gz", "ndjson", "avro", "parquet", "txt"]


def _line(raw: Any) -> bytes:
    if isinstance(raw, dict):
        return dumps(raw).encode("ascii")
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")


def _avro_records(raws: list[Any]) -> list[dict[str, Any]]:
    """The dict payloads that an Avro or Parquet writer can hold (UTF-8 text, a type)."""
    records = []
    for raw in raws:
        if not isinstance(raw, dict):
            continue
        try:
            record = event_to_avro_record(raw)
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
            continue
        records.append(record)
    return records


def event_file(directory: Path, raws: list[Any], form: str, cut: float | None) -> tuple[Path, int]:
    """A source file of ``raws`` in ``form``, cut short when ``cut``; and the payloads it holds intact."""
    if form in ("avro", "parquet"):
        records = _avro_records(raws)
        buf = io.BytesIO()
        if form == "avro":
            fastavro.writer(buf, event_schema(), records)
        else:
            names = [f["name"] for f in event_schema()["fields"]]
            pq.write_table(pa.Table.from_pylist(records, pa.schema([(n, pa.string()) for n in names])), buf)
        blob, count = buf.getvalue(), len(records)
    else:
        lines = [_line(raw) for raw in raws]
        blob = b"\n".join(lines)
        count = sum(1 for chunk in blob.split(b"\n") if chunk.strip())
        if form.endswith(".gz"):
            blob = gzip.compress(blob)
    if cut is not None:
        blob = blob[: int(len(blob) * cut)]
    path = directory / f"events.{form}"
    path.write_bytes(blob)
    return path, count


def readable(path: Path) -> fileio.ReadableFile:
    return fileio.ReadableFile(FileMetadata(str(path), path.stat().st_size))


@budget(50)
@given(
    raws=st.lists(payloads, max_size=10),
    form=st.sampled_from(JSONL_FORMS),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload(tmp_path_factory, raws, form, cut):
    path, count = event_file(tmp_path_factory.mktemp("files"), raws, form, cut)
    any_file = job_dofn(ReadAnyFile)
    out = drive(any_file, [readable(path)]).all
    assert not out.tagged
    if form == "txt":
        assert out.main == []
        assert drive(any_file._skip, [readable(path)]).all.main == []
        return
    # the format's own reader, as the job's ReadAnyFile holds it, driven on its own
    reader = any_file._readers["jsonl" if "json" in form else form]
    alone = drive(reader, [readable(path)]).all.main
    assert len(alone) == len(out.main)
    assert all(isinstance(p, Received) and p.origin.name == str(path) for p in out.main)
    unreadable = [p for p in out.main if isinstance(p.payload, str) and p.payload.startswith("unreadable file ")]
    assert len(unreadable) <= 1 and (not unreadable or out.main[-1] == unreadable[0])
    assert all(p.origin.kind == "file" for p in unreadable)
    # every payload read says where: its line (JSON lines) or record (Avro, Parquet), in file order
    positions = [p.origin.position for p in out.main if p not in unreadable]
    assert positions == sorted(set(positions)) and all(n >= 1 for n in positions)
    if form in ("avro", "parquet"):
        assert positions == list(range(1, len(positions) + 1))
    if cut is None and form != "json.gz":
        assert not unreadable and len(out.main) == count
    parse = drive(job_dofn(_Parse, "pubsub"), out.main)
    for item in parse.per_element:
        accounted(item, passed=1)


class FakeMessage:
    def __init__(
        self, offset: int, value: bytes | None, timestamp: tuple[int, int], error: Any = None
    ) -> None:
        self._offset, self._value, self._timestamp, self._error = offset, value, timestamp, error

    def error(self) -> Any:
        return self._error

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


class FakeConsumer:
    """Stands in for the broker: what confluent_kafka's Consumer gives ReadKafkaPartition (assign, consume,
    unassign, close), delivering the given messages in batches and then end-of-partition."""

    def __init__(self, messages: list[FakeMessage], batch: int) -> None:
        self._messages = messages
        self._batch = batch
        self.closed = False

    def assign(self, partitions: list[Any]) -> None:
        self._at = partitions[0].offset

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        chunk = self._messages[self._at : self._at + min(num_messages, self._batch)]
        self._at += len(chunk)
        if not chunk:
            return [FakeMessage(self._at, None, (0, -1), KafkaError(KafkaError._PARTITION_EOF))]
        return chunk

    def unassign(self) -> None:
        pass

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.committed = offsets[0].offset

    def close(self) -> None:
        self.closed = True


class Finalizer:
    """What a runner hands an SDF as its BundleFinalizerParam: callbacks run once the bundle is committed."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def register(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


kafka_timestamps = st.tuples(
    st.sampled_from([0, 1, 2]),  # not available, create time, log append time
    st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from(
            [-1, 0, 1_767_225_600_000, 1_767_225_600_000_000, 1_767_225_600_000_000_000, 2**63 - 1]
        ),
    ),
)


@budget(50)
@given(
    values=st.lists(st.one_of(st.none(), payloads.map(_line)), max_size=10),
    stamps=st.lists(kafka_timestamps, min_size=10, max_size=10),
    batch=st.integers(1, 4),
)
def test_kafka_partition_reader_hands_on_every_value_whatever_its_timestamp(values, stamps, batch):
    messages = [FakeMessage(i, v, stamps[i]) for i, v in enumerate(values)]
    fn = shipped(job_dofn(ReadKafkaPartition, "kafka"))
    consumer = fn._consumer = FakeConsumer(messages, batch)  # what setup() opens, without a broker
    span = KafkaPartitionRange("events", 0, 0, len(messages))
    tracker = _Offsets().create_tracker(_Offsets().initial_restriction(span))
    out = Emitted()
    try:
        fn.start_bundle()
        out.take(fn.process(span, tracker=tracker, watermark=None))
        out.take(fn.finish_bundle(), finishing=True)
    finally:
        fn.teardown()
    assert consumer.closed
    if messages:
        tracker.check_done()  # a bounded range is read to its end
    assert [r.payload for r in out.main] == [v for v in values if v is not None] and not out.tagged
    offsets = [i for i, v in enumerate(values) if v is not None]
    assert [(r.origin.name, r.origin.partition, r.origin.position) for r in out.main] == [
        ("events", 0, i) for i in offsets
    ]


@budget(50)
@given(
    values=st.lists(st.one_of(st.none(), payloads.map(_line)), max_size=10),
    stamps=st.lists(kafka_timestamps, min_size=10, max_size=10),
    batch=st.integers(1, 4),
)
def test_unbounded_kafka_reader_hands_on_every_value_and_commits_only_what_it_claimed(values, stamps, batch):
    messages = [FakeMessage(i, v, stamps[i]) for i, v in enumerate(values)]
    fn = shipped(job_dofn(ReadKafkaPartitionUnbounded, "kafka-streaming"))
    consumer = fn._consumer = FakeConsumer(messages, batch)
    span = KafkaPartitionRange("events", 0, 0, None)
    restriction = _Offsets().initial_restriction(span)
    watermark = _PartitionWatermarks().create_watermark_estimator(None)
    out = Emitted()
    try:
        for _ in range(len(messages) // batch + 2):  # the runner calls again after each resume
            tracker = _Offsets().create_tracker(restriction)
            finalizer = Finalizer()
            emitted = list(fn.process(span, tracker=tracker, watermark=watermark, finalizer=finalizer))
            continuation = emitted.pop()
            assert isinstance(continuation, ProcessContinuation)
            out.take(emitted)
            assert getattr(consumer, "committed", 0) <= restriction.start  # nothing before finalization
            for callback in finalizer.callbacks:
                callback()
            restriction = OffsetRange(consumer._at, restriction.stop)  # the runner's checkpoint: the rest
    finally:
        fn.teardown()
    assert [r.payload for r in out.main] == [v for v in values if v is not None] and not out.tagged
    assert getattr(consumer, "committed", 0) == len(messages)
    assert watermark.current_watermark() is not None


@budget(40)
@given(streams)
def test_the_commit_stage_settles_every_record_read_once_its_requests_and_letters_ended(raws):
    """Hostile payloads read from one partition (and a tombstone's gap at the end): each record ends
    skipped, dead-lettered or as requests; once every request has ended and every letter is appended,
    each record is settled and the partition's offset is committed to its end, and no state is left."""
    received = [Received(raw, Origin("kafka", "events", i, 0)) for i, raw in enumerate(raws)]
    claim = KafkaClaim("events", 0, 0, 0, len(raws) + 1, tuple(range(len(raws))))
    parse = drive(job_dofn(_Parse, "kafka-settled"), [claim, *received]).all
    mapping = drive(job_dofn(_Map, "kafka-settled"), parse.main).all
    signals = [*parse.tagged[TALLY], *mapping.tagged[TALLY]]
    signals += [ended(i) for _, (request, _) in mapping.main for i in request.event_ids]
    signals += [s for letter in parse.dead + mapping.dead for s in from_letter_line(dead_letter_json(letter))]
    partitions, events = Emitted().take(r for s in signals for r in route(s)), None
    events = sorted(partitions.tagged["events"], key=lambda item: item[1][0] != "expect")  # any order will do
    joined = drive(job_dofn(SettleEvents, "kafka-settled"), events, keyed=True).all
    settled = sorted(s[1][1] for s in [*partitions.main, *joined.main] if s[1][0] == "settled")
    assert settled == list(range(len(raws)))  # each record once
    fn = shipped(job_dofn(CommitSettledOffsets, "kafka-settled"))
    consumer = fn._consumer = FakeConsumer([], 1)  # what the first commit opens, without a broker
    key = Key(fn)
    for item in [*partitions.main, *joined.main]:
        assert key.call(fn.process, item) is None
    assert not list(key.fire(fn))
    assert consumer.committed == len(raws) + 1
    book = key.states[CommitSettledOffsets.BOOK].read()
    assert book.ranges == {} and book.settled == set()


# ---------------------------------------------------------------------------- snapshot

UTF8_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)  # Avro and Parquet text is UTF-8


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


TEXT_CELLS = st.one_of(UTF8_TEXT, emails, phones, urls).filter(_utf8)
# column kind -> (Avro type, Arrow type, cells a reader hands over)
KINDS: dict[str, tuple[Any, Any, st.SearchStrategy[Any]]] = {
    "string": (
        "string",
        pa.string(),
        st.one_of(TEXT_CELLS, st.sampled_from(["u1", "U1", " u1", "acc1", "", "\x00"])),
    ),
    "integer": ("long", pa.int64(), st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 3))),
    "float": ("double", pa.float64(), st.floats()),
    "decimal": (
        {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 9},
        pa.decimal128(38, 9),
        st.decimals(min_value=-(10**28), max_value=10**28, places=9, allow_nan=False, allow_infinity=False),
    ),
    "date": ({"type": "int", "logicalType": "date"}, pa.date32(), st.dates()),
    "timestamp": (
        {"type": "long", "logicalType": "timestamp-micros"},
        pa.timestamp("us", tz="UTC"),
        st.datetimes(timezones=st.just(UTC)),
    ),
    "boolean": ("boolean", pa.bool_(), st.booleans()),
    "list": ({"type": "array", "items": "string"}, pa.list_(pa.string()), st.lists(TEXT_CELLS, max_size=3)),
    "null": ("null", pa.null(), st.none()),
}


def _allowed_kinds(spec: Any, column: str) -> list[str]:
    roles = {
        "primary_key" if use == "primary_key" else "custom_field" if "." in use else "string_field"
        for use in spec.targets()[column]
    }
    return sorted(set.intersection(*(set(ACCEPTS[role]) for role in roles)) & set(KINDS))


@st.composite
def warehouse(draw: st.DrawFn) -> tuple[str, list[str], list[tuple[Any, ...]]]:
    """A config, a kind per column its schema check accepts, and rows of such cells (nulls anywhere)."""
    config_name = draw(st.sampled_from(sorted(SNAPSHOT_CONFIGS)))
    spec = snapshot_job.spec_for(SNAPSHOT_CONFIGS[config_name])
    kinds = [draw(st.sampled_from(_allowed_kinds(spec, c))) for c in spec.columns]
    cells = [st.one_of(st.none(), KINDS[k][2]) for k in kinds]
    rows = draw(st.lists(st.tuples(*cells), max_size=12))
    return config_name, kinds, rows


def avro_file(path: Path, columns: tuple[str, ...], kinds: list[str], rows: list[tuple[Any, ...]]) -> Path:
    schema = {
        "type": "record",
        "name": "row",
        "fields": [
            {"name": c, "type": "null" if k == "null" else ["null", KINDS[k][0]]}
            for c, k in zip(columns, kinds, strict=True)
        ],
    }
    with path.open("wb") as fh:
        fastavro.writer(
            fh, fastavro.parse_schema(schema), [dict(zip(columns, row, strict=True)) for row in rows]
        )
    return path


def arrow_batch(columns: tuple[str, ...], kinds: list[str], rows: list[tuple[Any, ...]]) -> pa.Table:
    arrays = [pa.array([row[i] for row in rows], KINDS[k][1]) for i, k in enumerate(kinds)]
    return pa.Table.from_arrays(arrays, names=list(columns))


def snapshot_batches(tmp: Path, config_name: str, kinds: list[str], rows: list[tuple[Any, ...]]) -> list[Any]:
    """The batches BucketRows gets: Avro files read by _ReadAvroBatches, and a Parquet row group."""
    spec = snapshot_job.spec_for(SNAPSHOT_CONFIGS[config_name])
    path = avro_file(tmp / "rows.avro", spec.columns, kinds, rows)
    from_avro = drive(snapshot_dofn(_ReadAvroBatches, config_name), [readable(path)]).all.main
    assert sum(len(b) for b in from_avro) == len(rows)
    return [*from_avro, arrow_batch(spec.columns, kinds, rows)]


def bucketed(config_name: str, batches: list[Any]) -> Run:
    return drive(snapshot_dofn(BucketRows, config_name), batches)


@budget(40)
@given(warehouse())
def test_bucket_rows_keys_every_row_or_dead_letters_it(tmp_path_factory, table):
    config_name, kinds, rows = table
    batches = snapshot_batches(tmp_path_factory.mktemp("rows"), config_name, kinds, rows)
    run = bucketed(config_name, batches)
    out = run.all
    assert sum(len(chunk) for _, chunk in out.main) + len(out.dead) == len(rows) * 2
    assert all(writable(letter)["reason"] == "null_primary_key" for letter in out.dead)


def prior_state(chunks: list[Any], data: st.DataObject) -> pa.Table:
    """A state holding some snapshot keys (same or other fingerprint) and some keys the snapshot lacks."""
    keys, fps = [], []
    for _, chunk in chunks:
        for key, fp in zip(chunk.keys.to_pylist(), chunk.fingerprints.to_pylist(), strict=True):
            choice = data.draw(st.sampled_from(["absent", "same", "other"]))
            if choice != "absent" and key not in keys:
                keys.append(key)
                fps.append(fp if choice == "same" else bytes(16))
    for key in data.draw(st.lists(UTF8_TEXT, max_size=3)):
        if key not in keys:
            keys.append(key)
            fps.append(b"\x01" * 16)
    return pa.table({"key": pa.array(keys, pa.string()), "fingerprint": pa.array(fps, pa.binary())})


def diffed(config_name: str, full: bool, chunks: list[Any], state: pa.Table) -> Run:
    """What CoGroupByKey on the bucket hands DiffBucket: each bucket's snapshot chunks and state tables."""
    cogrouped: dict[int, dict[str, list[Any]]] = defaultdict(lambda: {"snapshot": [], "state": []})
    for bucket, chunk in chunks:
        cogrouped[bucket]["snapshot"].append(chunk)
    for bucket, part in bucket_state(state, snapshot_job.DEFAULT_BUCKETS):
        cogrouped[bucket]["state"].append(part)
    return drive(snapshot_dofn(DiffBucket, config_name, full), list(cogrouped.items()))


@budget(40)
@given(warehouse(), st.booleans(), st.data())
def test_diff_bucket_ends_every_row_as_a_change_a_duplicate_or_kept(tmp_path_factory, table, full, data):
    config_name, kinds, rows = table
    batch = snapshot_batches(tmp_path_factory.mktemp("rows"), config_name, kinds, rows)[-1:]
    chunks = bucketed(config_name, batch).all.main
    state = prior_state(chunks, data)
    run = diffed(config_name, full, chunks, state)
    out = run.all
    keys = Counter(key for _, chunk in chunks for key in chunk.keys.to_pylist())
    duplicated = {k for k, n in keys.items() if n > 1}
    kept = Counter(k for table_ in out.tagged[KEEP] for k in table_.column("key").to_pylist())
    changed = Counter(c.key for c in out.main)
    assert all(isinstance(c, Change) for c in out.main)
    assert sum(changed.values()) + len(out.dead) + sum(
        n for k, n in kept.items() if k not in duplicated
    ) == sum(keys.values())
    assert not set(changed) & duplicated and not set(changed) & set(kept)
    assert [writable(d)["reason"] for d in out.dead] == ["duplicate_primary_key"] * sum(
        keys[k] for k in duplicated
    )
    assert set(out.tagged[GONE]) == set(state.column("key").to_pylist()) - set(keys)


@budget(40)
@given(warehouse(), st.booleans(), st.data())
def test_to_pending_requests_or_dead_letters_each_change_and_state_tables_keep_every_row(
    tmp_path_factory, table, full, data
):
    config_name, kinds, rows = table
    batch = snapshot_batches(tmp_path_factory.mktemp("rows"), config_name, kinds, rows)[-1:]
    chunks = bucketed(config_name, batch).all.main
    diff = diffed(config_name, full, chunks, prior_state(chunks, data))
    changes = diff.all.main
    run = drive(snapshot_dofn(_ToPending, config_name), changes)
    for change, item in zip(changes, run.per_element, strict=True):
        if item.main:
            (pending,) = item.main
            assert not item.tagged and pending.request.event_ids == (f"row:{change.key}",)
        else:
            (letter,) = item.dead
            assert writable(letter)["stage"] == "snapshot"
            assert item.tagged[KEEP] == (
                [(change.key, change.previous)] if change.previous is not None else []
            )
    # the next state: kept tables, plus the settled fingerprints of what went to Close
    outcomes = [data.draw(OUTCOMES) for _ in run.all.main]
    pairs = [pair for item in zip(run.all.main, outcomes, strict=True) for pair in settled_fingerprint(item)]
    tables = [*diff.all.tagged[KEEP], _state_table(pairs + run.all.tagged[KEEP])]
    rows_in = sum(t.num_rows for t in tables)
    rebatched = drive(snapshot_dofn(_Rebatch, config_name), tables).all.main
    counted = drive(snapshot_dofn(_CountState, config_name), rebatched).all.main
    assert sum(t.num_rows for t in counted) == rows_in
    assert all(t.schema.equals(state_schema()) for t in counted)


@budget(30)
@given(warehouse(), st.booleans(), st.data())
def test_read_state_file_reads_a_state_or_names_the_damaged_file(tmp_path_factory, table, full, data):
    """A damaged state file stops a run with StateCorrupt naming it (by design: the state is the job's own,
    and a diff against part of it would resend or forget rows); --full reads on without it."""
    config_name, kinds, rows = table
    tmp = tmp_path_factory.mktemp("state")
    chunks = bucketed(config_name, snapshot_batches(tmp, config_name, kinds, rows)[-1:]).all.main
    state = prior_state(chunks, data)
    buf = io.BytesIO()
    pq.write_table(state, buf, row_group_size=data.draw(st.integers(1, 4)))
    blob = buf.getvalue()
    damage = data.draw(st.sampled_from(["none", "cut", "flip", "garbage"]))
    if damage == "cut":
        blob = blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    elif damage == "flip":
        at = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]
    elif damage == "garbage":
        blob = data.draw(st.binary(max_size=200))
    path = tmp / "state-00000.parquet"
    path.write_bytes(blob)
    fn = snapshot_dofn(_ReadStateFile, config_name, full)
    try:
        out = drive(fn, [readable(path)]).all
    except StateCorrupt as exc:
        assert not full and damage != "none" and str(path) in str(exc)
        return
    assert not out.tagged
    if damage == "none":
        assert sum(t.num_rows for t in out.main) == state.num_rows


# ---------------------------------------------------------------------------- every DoFn is driven

# DoFn class -> the tests that drive it (a generic DoFn, once per role the job gives it).
DRIVERS: dict[type, tuple[Callable[..., Any], ...]] = {
    _Parse: (test_parse_accounts_for_every_payload,),
    Identify: (test_identify_places_every_payload_by_the_person_its_parse_names,),
    DropRedeliveriesWithTtl: (test_dedupe_with_ttl_passes_or_skips_each_event,),
    _Map: (test_map_accounts_for_every_event,),
    PackShards: (
        test_per_person_fold_passes_one_copy_of_each_message_id,
        test_per_person_fold_keeps_every_event_id_of_every_person,
        test_ledger_settles_every_payload_read_exactly_once,
        test_writer_ends_every_request_with_one_outcome_against_close,  # the writer's packer
    ),
    _FoldShard: (
        test_per_person_fold_passes_one_copy_of_each_message_id,
        test_per_person_fold_keeps_every_event_id_of_every_person,
        test_ledger_settles_every_payload_read_exactly_once,
    ),
    _CollapsePanes: (test_collapse_panes_emit_every_event_id_of_every_person_when_the_pane_fires,),
    _Explode: (test_explode_makes_a_pending_per_collapsed_request,),
    _SuppressIdentical: (test_suppress_identical_sends_or_suppresses_each_request,),
    EmitOutcomes: (test_settle_suppressed_ends_each_event_of_each_request,),
    _CountFinal: (test_ledger_settles_every_payload_read_exactly_once,),
    AppendLines: (test_append_lines_writes_each_dead_letter_as_one_json_line,),
    ApplyBatches: (test_writer_ends_every_request_with_one_outcome_against_close,),
    ApplyBatchesStreaming: (test_writer_ends_every_request_with_one_outcome_against_close,),
    ReadAnyFile: (test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload,),
    ReadJsonLines: (test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload,),
    ReadAvroRows: (test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload,),
    ReadParquetRows: (test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload,),
    SkipUnsupportedFile: (test_file_readers_hand_on_every_payload_or_one_unreadable_file_payload,),
    ReadKafkaPartition: (test_kafka_partition_reader_hands_on_every_value_whatever_its_timestamp,),
    ReadKafkaPartitionUnbounded: (test_unbounded_kafka_reader_hands_on_every_value_and_commits_only_what_it_claimed,),
    SettleEvents: (test_the_commit_stage_settles_every_record_read_once_its_requests_and_letters_ended,),
    CommitSettledOffsets: (test_the_commit_stage_settles_every_record_read_once_its_requests_and_letters_ended,),
    _ReadAvroBatches: (test_bucket_rows_keys_every_row_or_dead_letters_it,),
    BucketRows: (test_bucket_rows_keys_every_row_or_dead_letters_it,),
    DiffBucket: (test_diff_bucket_ends_every_row_as_a_change_a_duplicate_or_kept,),
    _ToPending: (test_to_pending_requests_or_dead_letters_each_change_and_state_tables_keep_every_row,),
    _Rebatch: (test_to_pending_requests_or_dead_letters_each_change_and_state_tables_keep_every_row,),
    _CountState: (test_to_pending_requests_or_dead_letters_each_change_and_state_tables_keep_every_row,),
    _ReadStateFile: (test_read_state_file_reads_a_state_or_names_the_damaged_file,),
}

EXEMPT: dict[type, str] = {
    _ReadFile: "abstract base of the file readers; its process() runs in each reader's driver",
    PlanKafkaPartitions: "its element is the configured topic name, never event data; it only asks the broker for offsets",
}


def test_every_dofn_of_the_job_is_driven_or_exempt_with_a_reason():
    found = discovered_dofns()
    assert not set(DRIVERS) & set(EXEMPT)
    assert found - set(DRIVERS) - set(EXEMPT) == set(), "DoFns without a driver: add them to DRIVERS"
    assert set(DRIVERS) | set(EXEMPT) <= found, "drivers for DoFns the job no longer defines"
    assert all(reason.strip() for reason in EXEMPT.values())
    assert all(tests and all(t.__name__.startswith("test_") for t in tests) for tests in DRIVERS.values())
