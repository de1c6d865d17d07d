"""Unbounded input: redeliveries within the TTL are dropped, in a bounded number of keys whose state is pruned."""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to

from closecrm.events.parse import parse_event
from pipeline.config import default_config
from tests.pipeline.helpers import FakeState
from transforms import dedupe
from transforms.dedupe import DEDUPE_BUCKETS, DropRedeliveriesWithTtl, dedupe_bucket
from transforms.ledger import SKIPPED
from transforms.parse import LEDGER, ParseEvents

DEFAULT_OPTIONS = default_config().options()


class FakeTimer:
    def __init__(self) -> None:
        self.at: list[float] = []

    def set(self, ts: Any) -> None:
        self.at.append(float(ts))


def event(message_id: str) -> Any:
    return parse_event(json.dumps({"type": "identify", "userId": "u1", "messageId": message_id}))


def test_a_bucket_drops_copies_within_the_ttl_and_forgets_them_after(monkeypatch) -> None:  # noqa: ANN001
    clock = [1_000.0]
    monkeypatch.setattr(dedupe.time, "time", lambda: clock[0])
    fn = DropRedeliveriesWithTtl(ttl_seconds=60)
    state, timer = FakeState(), FakeTimer()

    def send(message_id: str) -> list[Any]:
        return list(fn.process((0, event(message_id)), seen=state, prune=timer))

    assert [e.message_id for e in send("a")] == ["a"]
    assert timer.at == [1_060.0]  # first id of an empty bucket: prune at its expiry
    clock[0] = 1_030.0
    assert [e.message_id for e in send("b")] == ["b"]
    dup = send("a")
    assert len(dup) == 1 and dup[0].tag == LEDGER and dup[0].value[1] == SKIPPED
    assert dup[0].value[0].startswith("dup:a:")

    clock[0] = 1_061.0  # "a" expired, "b" has not
    fn.prune_expired(seen=state, prune=timer)
    assert set(state.value) == {"b"} and timer.at[-1] == 1_090.0
    assert [e.message_id for e in send("a")] == ["a"]  # past the TTL a copy is new again
    clock[0] = 1_200.0
    fn.prune_expired(seen=state, prune=timer)
    assert state.value is None  # an empty bucket holds nothing


def test_buckets_are_bounded_and_stable() -> None:
    buckets = {dedupe_bucket(f"m{i}") for i in range(20_000)}
    assert len(buckets) == DEDUPE_BUCKETS and min(buckets) == 0 and max(buckets) == DEDUPE_BUCKETS - 1
    assert dedupe_bucket("abc") == dedupe_bucket("abc")


def test_streaming_parse_drops_redelivered_message_ids() -> None:
    lines = [json.dumps({"type": "identify", "userId": f"u{i}", "messageId": f"m{i}"}).encode() for i in range(6)]
    stream = test_stream.TestStream().add_elements(lines).add_elements(lines[:2]).advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as p:
        parsed = p | stream | ParseEvents(max_bytes=DEFAULT_OPTIONS.max_event_bytes, dedupe_ttl_seconds=600)
        ids = parsed["events"] | "Ids" >> beam.Map(lambda e: e.message_id)
        assert_that(ids, equal_to([f"m{i}" for i in range(6)]), label="first copies")
        dups = parsed[LEDGER] | beam.Filter(lambda kv: kv[0].startswith("dup:")) | beam.Map(lambda kv: kv[0][:6])
        assert_that(dups, equal_to(["dup:m0", "dup:m1"]), label="redeliveries")
