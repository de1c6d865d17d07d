"""W4-style bad input at volume: every corrupted event is dead-lettered with a reason, every good one applied."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from pipeline.sources import SourceOptions
from tests.pipeline.helpers import write_jsonl
from tests.reliability.rel_helpers import applied_ids, dead_letters, fresh, identify, run_job, w1_events
from transforms import metrics as m

pytestmark = pytest.mark.integration

KINDS = 8
PER_KIND = 10  # 2% of 500 good events, for each kind


def corrupt(kind: int, i: int) -> str:
    mid = f"bad_{kind}_{i}"
    good = identify(5000 + kind * 100 + i, 1, 0)
    bodies: list[Any] = [
        "{not json " + mid,
        json.dumps(["an", "array", mid]),
        json.dumps({"type": "identify", "messageId": mid, "traits": {"email": "x@example.com"}}),
        json.dumps({"type": "identify", "messageId": mid, "userId": f"u_{mid}", "traits": "not an object"}),
        json.dumps({"type": "identify", "messageId": mid, "userId": f"u_{mid}", "traits": {"email": "nope"}}),
        json.dumps(
            {"type": "identify", "messageId": mid, "userId": f"u_{mid}", "traits": {"bio": "x" * 5000}}
        ),
        json.dumps({"type": "warp", "messageId": mid, "userId": f"u_{mid}"}),
        json.dumps({**good, "messageId": mid, "traits": {**good["traits"], "name": {"first": "a dict"}}}),
    ]
    return bodies[kind]


def test_every_corrupted_kind_is_dead_lettered_with_a_reason_and_every_good_event_applied(
    sim, tmp_path, monkeypatch, capsys
):
    config, cf = fresh(sim, tmp_path, {"pipeline": {"batch_size": 50, "max_event_bytes": 2048}})
    good = w1_events(users=50, companies=10, per_user=10)
    bad = [corrupt(k, i) for k in range(KINDS) for i in range(PER_KIND)]
    rows: list[Any] = []
    for n, event in enumerate(good):  # corruption spread through the stream
        rows.append(event)
        if n % 6 == 5 and bad:
            rows.append(bad.pop())
    rows.extend(bad)
    path = write_jsonl(tmp_path / "events.jsonl", rows)

    values = run_job(sim, config, SourceOptions(source="files", input=str(path)), tmp_path, monkeypatch)

    letters = dead_letters(tmp_path)
    reasons = Counter(letter.get("reason") for letter in letters)
    with capsys.disabled():
        print(f"\n[bad input] read {values.get(m.EVENTS_READ)}; dead letters by reason {dict(reasons)}")
    assert values.get(m.EVENTS_READ) == len(good) + KINDS * PER_KIND
    assert len(letters) == values.get(m.EVENTS_DEAD_LETTERED) == KINDS * PER_KIND
    assert all(letter.get("reason") and letter.get("stage") in {"parse", "map"} for letter in letters)
    assert len(reasons) == KINDS and set(reasons.values()) == {PER_KIND}, reasons  # one reason per kind
    assert reasons["unparseable_json"] == reasons["too_large"] == reasons["invalid_email"] == PER_KIND
    # every corrupted kind is there: each letter names its event, so each bad_<kind>_<i> shows up once
    text = [json.dumps(letter) for letter in letters]
    for kind in range(KINDS):
        for i in range(PER_KIND):
            assert sum(f"bad_{kind}_{i}" in t for t in text) == 1, f"kind {kind} #{i} not dead-lettered once"
    applied = applied_ids(tmp_path)
    assert sorted(applied) == sorted(e["messageId"] for e in good)
    assert len(sim.contacts()) == 50 and len(sim.leads()) == 10
