"""The bulk forms of bounded runs: packed dedupe, per-shard collapse, packed events, ledger folded per shard."""

from __future__ import annotations

import json
import pickle

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from closecrm.events.parse import BadEvent, parse_event
from closecrm.model import UpsertRequest
from pipeline.config import default_config
from transforms import metrics as m
from transforms.collapse import CollapsePerPerson, PackedEvents, _CollapseFn
from transforms.ledger import APPLIED, DEAD, SKIPPED, SettleLedger
from transforms.parse import LEDGER, ParseEvents

DEFAULT_OPTIONS = default_config().options()


def counters(result) -> dict[str, int]:  # noqa: ANN001
    query = result.metrics().query(MetricsFilter().with_namespace(m.NAMESPACE))
    out: dict[str, int] = {}
    for c in query["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or 0)
    return out


_COLLECTED: list = []


def _collect(got) -> None:  # noqa: ANN001 - runs in-process (FnApiRunner), so the list is this module's
    _COLLECTED.extend(got)


def test_packed_events_read_like_the_tuple_they_stand_for():
    events = ({"messageId": "a", "traits": {"x": 1}}, {"messageId": "b"})
    packed = PackedEvents.of(events)
    assert len(packed) == 2
    assert packed[0] == events[0] and packed[-1] == events[1]
    assert list(packed) == list(events)
    assert packed == events and packed == PackedEvents.of(events)
    assert pickle.loads(pickle.dumps(packed)) == events
    assert PackedEvents.of(()) == () and len(PackedEvents.of(())) == 0


def test_batch_ledger_counts_each_event_once_with_its_most_serious_status():
    entries = [("a", APPLIED), ("a", DEAD), ("b", SKIPPED), ("b", APPLIED), ("c", SKIPPED)]
    entries += [(f"e{i}", APPLIED) for i in range(1000)]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(entries) | SettleLedger(streaming=False)
    values = counters(p.run())
    assert values[m.EVENTS_APPLIED] == 1001
    assert values[m.EVENTS_DEAD_LETTERED] == 1
    assert values[m.EVENTS_SKIPPED] == 1


def test_batch_dedupe_passes_one_copy_per_message_id_and_ledgers_the_others():
    lines = [
        json.dumps({"type": "identify", "userId": f"u{i % 7}", "messageId": f"m{i}"}) for i in range(300)
    ]
    redelivered = lines[:25] + lines[:5]
    bad = ["not json"]
    p = beam.Pipeline(runner=FnApiRunner())
    out = (
        p | beam.Create([line.encode() for line in lines + redelivered + bad]) | ParseEvents(
            max_bytes=DEFAULT_OPTIONS.max_event_bytes,
            dedupe_ttl_seconds=DEFAULT_OPTIONS.dedupe_seconds,
            streaming=False,
        )
    )
    assert_that(out["events"] | beam.Map(lambda e: e.message_id), equal_to([f"m{i}" for i in range(300)]))
    dup_keys = out[LEDGER] | beam.Filter(lambda kv: kv[0].startswith("dup:")) | beam.Map(lambda kv: kv[1])
    assert_that(dup_keys, equal_to([SKIPPED] * 30), label="dups")
    values = counters(p.run())
    assert values[m.EVENTS_READ] == 331
    assert values[m.EVENTS_DUPLICATE] == 30


def test_batch_collapse_gives_what_the_combine_gives():
    def request(user: str, n: int, title: str) -> UpsertRequest:
        return UpsertRequest(
            contact_user_id=user,
            contact_title=title,
            event_ids=(f"{user}-{n}",),
            timestamp=f"2026-11-01T00:00:{n:02d}Z",
        )

    items = [
        (f"user:{u}", (request(u, n, f"t{n // 3}"), {"n": n, "u": u})) for u in "abcdef" for n in range(9)
    ]

    def run():
        p = beam.Pipeline(runner=FnApiRunner())
        out = (
            p
            | beam.Create(items)
            | CollapsePerPerson(
                streaming=False,
                window_kind=DEFAULT_OPTIONS.window_kind,
                window_seconds=DEFAULT_OPTIONS.window_seconds,
            )
            | beam.Map(
                lambda pd: (pd.person, pd.request.event_ids, pd.request.contact_title, tuple(pd.events))
            )
        )
        _COLLECTED.clear()
        assert_that(out, _collect)
        p.run()
        return sorted(_COLLECTED)

    bulk = run()
    assert len(bulk) == 6  # one request per person: same user, same flags, titles merged in order
    assert all(title == "t2" and len(ids) == 9 and len(events) == 9 for _, ids, title, events in bulk)
    expected = []
    for person in sorted({person for person, _ in items}):
        mine = [pair for key, pair in items if key == person]
        for req, events in _CollapseFn().extract_output(mine):
            expected.append((person, req.event_ids, req.contact_title, tuple(events)))
    assert bulk == sorted(expected)


def test_json_text_with_an_overflowing_number_is_rejected_like_before():
    for raw in (
        '{"type":"identify","userId":"u","traits":{"x":1e999}}',
        '{"type":"identify","userId":"u","traits":"{\\"x\\":1e999}"}',
    ):
        try:
            parse_event(raw)
        except BadEvent as exc:
            assert exc.reason == "wrong_type:traits"
        else:
            raise AssertionError("accepted an infinite number")
    event = parse_event(b'{"type":"identify","userId":1e15,"timestamp":0}')
    assert event.user_id == "1000000000000000" and event.timestamp == "1970-01-01T00:00:00.000000Z"
