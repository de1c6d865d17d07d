"""W4-style bad input at volume: every corrupted event is dead-lettered with a reason, every event with a bad
optional value is applied without it (the value named in the audit log), every good one applied."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from pipeline.sources import SourceOptions
from tests.pipeline.helpers import read_lines, write_jsonl
from tests.reliability.rel_helpers import applied_ids, dead_letters, fresh, identify, run_job, w1_events
from transforms import metrics as m

pytestmark = pytest.mark.integration

KINDS = 8
PER_KIND = 10  # 2% of 500 good events, for each kind
VALUE_KINDS = 2  # bad optional values: dropped, the event applied


def corrupt(kind: int, i: int) -> str:
    mid = f"bad_{kind}_{i}"
    good = identify(5000 + kind * 100 + i, 1, 0)
    bodies: list[Any] = [
        "{not json " + mid,
        json.dumps(["an", "array", mid]),
        json.dumps({"type": "identify", "messageId": mid, "traits": {"email": "x@example.com"}}),
        json.dumps({"type": "identify", "messageId": mid, "userId": f"u_{mid}", "traits": "not an object"}),
        json.dumps({**good, "messageId": mid, "traits": {**good["traits"], "company": {"id": {"an": "object"}}}}),
        json.dumps(
            {"type": "identify", "messageId": mid, "userId": f"u_{mid}", "traits": {"bio": "x" * 5000}}
        ),
        json.dumps({"type": "warp", "messageId": mid, "userId": f"u_{mid}"}),
        json.dumps({"type": "identify", "messageId": mid, "userId": f"u_{mid}", "timestamp": "yesterday-ish"}),
    ]
    return bodies[kind]


def bad_value(kind: int, i: int) -> dict[str, Any]:
    """A good event but for one optional value that cannot be sent."""
    event = identify(7000 + kind * 100 + i, 1, 0)
    event["messageId"] = f"value_{kind}_{i}"
    traits = event["traits"]
    if kind == 0:
        traits["email"] = "nope"  # the user id is the identity: the email is left out
    else:
        traits["name"] = {"first": "a dict"}
    return event


def test_every_corrupted_kind_is_dead_lettered_with_a_reason_and_every_other_event_applied(
    sim, tmp_path, monkeypatch, capsys
):
    config, cf = fresh(sim, tmp_path, {"pipeline": {"batch_size": 50, "max_event_bytes": 2048}})
    good = w1_events(users=50, companies=10, per_user=10)
    bad = [corrupt(k, i) for k in range(KINDS) for i in range(PER_KIND)]
    values_bad = [bad_value(k, i) for k in range(VALUE_KINDS) for i in range(PER_KIND)]
    rows: list[Any] = []
    spread = [*bad, *values_bad]
    for n, event in enumerate(good):  # corruption spread through the stream
        rows.append(event)
        if n % 5 == 4 and spread:
            rows.append(spread.pop())
    rows.extend(spread)
    path = write_jsonl(tmp_path / "events.jsonl", rows)

    values = run_job(sim, config, SourceOptions(source="files", input=str(path)), tmp_path, monkeypatch)

    letters = dead_letters(tmp_path)
    reasons = Counter(letter.get("reason") for letter in letters)
    with capsys.disabled():
        print(f"\n[bad input] read {values.get(m.EVENTS_READ)}; dead letters by reason {dict(reasons)}")
    assert values.get(m.EVENTS_READ) == len(good) + (KINDS + VALUE_KINDS) * PER_KIND
    assert len(letters) == values.get(m.EVENTS_DEAD_LETTERED) == KINDS * PER_KIND
    assert all(letter.get("reason") and letter.get("stage") in {"parse", "map"} for letter in letters)
    assert len(reasons) == KINDS and set(reasons.values()) == {PER_KIND}, reasons  # one reason per kind
    assert reasons["unparseable_json"] == reasons["too_large"] == reasons["wrong_type:lead_company_id"] == PER_KIND
    # every corrupted kind is there: each letter names its event, so each bad_<kind>_<i> shows up once,
    # and says which line of the file it was
    text = [json.dumps(letter) for letter in letters]
    for kind in range(KINDS):
        for i in range(PER_KIND):
            assert sum(f"bad_{kind}_{i}" in t for t in text) == 1, f"kind {kind} #{i} not dead-lettered once"
    lines = {n for n, row in enumerate(rows, start=1) if isinstance(row, str)}
    assert {letter["source"]["line"] for letter in letters} == lines
    # the bad optional values: each event applied without the value, which the audit log names
    applied = applied_ids(tmp_path)
    assert sorted(applied) == sorted([e["messageId"] for e in good] + [e["messageId"] for e in values_bad])
    audit = read_lines(tmp_path / "audit.jsonl")
    dropped = Counter((d["field"], d["reason"]) for line in audit for d in line["dropped"])
    assert dropped == {("contact_email", "invalid_email"): PER_KIND, ("contact_name", "wrong_type:contact_name"): PER_KIND}
    assert values.get(m.FIELDS_DROPPED) == VALUE_KINDS * PER_KIND
    assert len(sim.contacts()) == 50 + VALUE_KINDS * PER_KIND and len(sim.leads()) == 10
