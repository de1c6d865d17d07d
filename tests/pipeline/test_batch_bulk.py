"""The bulk forms of bounded runs: the per-person pass (dedupe, map, collapse), packed events, ledger folded per shard."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that

from closecrm.events.parse import BadEvent, parse_event
from closecrm.model import Origin, Received, UpsertRequest, flat_read, read_of
from pipeline.config import default_config
from transforms import metrics as m
from transforms import sharded
from transforms.collapse import CollapsePerPerson, PackedEvents, _CollapseFn, collapse_persons
from transforms.deadletter import DEAD as LETTERS
from transforms.ledger import APPLIED, DEAD, LEDGER, SKIPPED, SettleLedger
from transforms.mapping import EventMapper
from transforms.per_person import PENDING, PerPerson

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


def test_packed_events_give_back_each_received_payload_with_its_origin():
    events = (
        Received(b'{"messageId": "a"}', Origin("line", "gs://b/events.jsonl", 7)),
        Received("text", Origin("kafka", "events", 41, 2)),
        Received(b"no origin", None),
        {"messageId": "row"},  # a row: packed as it is
    )
    packed = pickle.loads(pickle.dumps(PackedEvents.of(events)))
    assert packed == events and all(type(a) is type(b) for a, b in zip(packed, events, strict=True))
    assert [read_of(flat_read(e.payload, e.origin)) for e in events[:3]] == [(e.payload, e.origin) for e in events[:3]]


def test_batch_ledger_counts_each_event_once_with_its_most_serious_status():
    entries = [("a", APPLIED), ("a", DEAD), ("b", SKIPPED), ("b", APPLIED), ("c", SKIPPED)]
    entries += [(f"e{i}", APPLIED) for i in range(1000)]
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(entries) | SettleLedger(streaming=False)
    values = counters(p.run())
    assert values[m.EVENTS_APPLIED] == 1001
    assert values[m.EVENTS_DEAD_LETTERED] == 1
    assert values[m.EVENTS_SKIPPED] == 1


def _per_person(lines: list[str], *, dedupe: bool = True, processes: int = 0):  # noqa: ANN202
    """Bounded input's per-person pass (parse included); returns (Pendings, ledger entries, dead letters,
    counters). ``processes``: worker processes folding every shard they can take (see `away`)."""
    p = beam.Pipeline(runner=FnApiRunner())
    out = (
        p
        | beam.Create([line.encode() for line in lines])
        | PerPerson(
            DEFAULT_OPTIONS.mappings,
            max_bytes=DEFAULT_OPTIONS.max_event_bytes,
            dedupe=dedupe,
            by_user_id=False,
            processes=processes,
        )
    )
    ledger = tuple(out[LEDGER]) | "Ledger" >> beam.Flatten()
    letters = tuple(out[LETTERS]) | "Letters" >> beam.Flatten()
    for name, pcoll in (("pending", out[PENDING]), ("ledger", ledger), ("dead", letters)):
        _ = pcoll | f"Collect{name}" >> beam.Map(_collect_into, name)
    _BY_NAME.clear()
    values = counters(p.run())
    return _BY_NAME.get("pending", []), _BY_NAME.get("ledger", []), _BY_NAME.get("dead", []), values


_BY_NAME: dict[str, list] = {}


def _collect_into(item, name: str) -> None:  # noqa: ANN001 - runs in-process (FnApiRunner)
    _BY_NAME.setdefault(name, []).append(item)


def _identify(user: str, message_id: str, title: str = "t", **more) -> str:  # noqa: ANN003
    traits = {"email": f"{user}@example.com", "title": title, **more}
    return json.dumps({"type": "identify", "userId": user, "messageId": message_id, "traits": traits})


@pytest.fixture(params=[0, 1], ids=["folded here", "folded in a worker process"])
def away(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Worker processes for the per-person fold; with one, it takes shards of any size."""
    monkeypatch.setattr(sharded, "AWAY_MIN_BYTES", 0)
    return request.param


def test_batch_dedupe_passes_one_copy_per_message_id_and_ledgers_the_others(away: int):
    lines = [_identify(f"u{i % 7}", f"m{i}", title=f"t{i}") for i in range(300)]
    redelivered = lines[:25] + lines[:5]
    pending, ledger, dead, values = _per_person(lines + redelivered + ["not json"], processes=away)
    ids = Counter(i for pd in pending for i in pd.request.event_ids)
    assert ids == Counter(f"m{i}" for i in range(300))  # every event once, in one of 7 persons' requests
    assert {pd.person for pd in pending} == {f"user:u{i}" for i in range(7)}
    assert sorted(s for k, s in ledger if k.startswith("dup:")) == [SKIPPED] * 30
    assert values[m.EVENTS_READ] == 331
    assert values[m.EVENTS_DUPLICATE] == 30
    assert len(dead) == 1 and values[m.REQUESTS_MAPPED] == 300


def test_batch_dedupe_keeps_one_copy_of_a_message_id_several_people_share(away: int):
    # A producer that reuses messageIds: m-shared under three people (and twice under u2), spread over
    # more people than one shard holds, so the copies meet in different calls of the fold.
    lines = [_identify(f"u{i}", f"m{i}") for i in range(60)]
    shared = [
        _identify("u1", "m-shared"),
        _identify("u2", "m-shared"),
        _identify("u2", "m-shared"),
        _identify("u47", "m-shared"),
    ]
    pending, ledger, _, values = _per_person(lines + shared, processes=away)
    carrying = [pd.person for pd in pending if "m-shared" in pd.request.event_ids]
    assert len(carrying) == 1 and carrying[0] in {"user:u1", "user:u2", "user:u47"}
    assert sum(1 for k, _ in ledger if k.startswith("dup:")) == 3
    assert values[m.EVENTS_DUPLICATE] == 3
    assert Counter(i for pd in pending for i in pd.request.event_ids) == Counter(
        [f"m{i}" for i in range(60)] + ["m-shared"]
    )


def test_batch_without_dedupe_passes_every_copy():
    lines = [_identify("u1", "m1", title="a"), _identify("u1", "m1", title="a"), _identify("u2", "m2")]
    pending, ledger, _, values = _per_person(lines, dedupe=False)
    assert Counter(i for pd in pending for i in pd.request.event_ids) == Counter(["m1", "m2"])  # merged ids
    assert not [k for k, _ in ledger if k.startswith("dup:")] and values.get(m.EVENTS_DUPLICATE, 0) == 0
    assert values[m.REQUESTS_MAPPED] == 3


def test_batch_per_person_gives_what_map_then_collapse_give(away: int):
    """The one-pass fold equals the streaming stages' work, run one after the other: _Map per event of
    the first copies, then the collapse per person."""
    lines = [
        _identify(f"u{i % 5}", f"m{i}", title=f"t{i // 4}", phone=f"+1 415 555 01{i % 3:02d}")
        for i in range(80)
    ]
    lines += [
        json.dumps(
            {
                "type": "identify",
                "anonymousId": "a1",
                "messageId": "anon-1",
                "traits": {"email": "x@example.com"},
            }
        )
    ]
    lines += [
        json.dumps({"type": "track", "userId": "u1", "messageId": "track-1", "event": "Clicked"})
    ]  # no mapping: skipped
    pending, _, _, _ = _per_person(lines + lines[:10], processes=away)
    mapper = EventMapper(DEFAULT_OPTIONS.mappings)
    keyed = [
        out for line in lines for out in mapper.outputs(parse_event(line.encode())) if isinstance(out, tuple)
    ]
    expected = sorted(
        (person, req.event_ids, req.fingerprint(), tuple(events))
        for person, collapsed in collapse_persons(keyed)
        for req, events in collapsed
    )
    got = sorted(
        (pd.person, pd.request.event_ids, pd.request.fingerprint(), tuple(pd.events)) for pd in pending
    )
    assert got == expected


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
