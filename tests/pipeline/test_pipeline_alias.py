"""Alias through the whole job: a batch run from files and a streaming run from Pub/Sub, into the simulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.pipeline.helpers import read_lines, run_files, sim_config, write_jsonl
from tests.pipeline.test_pipeline_streams import run_pubsub

pytestmark = pytest.mark.integration

MAPPINGS = {
    "mappings": [
        {"name": "Identify", "preset": "identify"},
        {"name": "Alias", "preset": "alias", "allow_merging": True},
    ]
}


def events() -> list[dict[str, Any]]:
    """A visitor identified by an anonymous-looking id, then aliased to their account, then the account."""

    def at(n: int, **event: Any) -> dict[str, Any]:
        return {"messageId": f"m{n}", "timestamp": f"2026-11-01T00:00:{n:02d}Z", **event}

    return [
        at(1, type="identify", userId="u2", traits={"email": "u2@x.example", "name": "Dee"}),
        at(2, type="identify", userId="visitor-7", traits={"email": "v7@x.example", "name": "V"}),
        at(3, type="identify", userId="visitor-7", traits={"phone": "+14155550100"}),
        at(4, type="alias", previousId="visitor-7", userId="u2"),
        at(5, type="identify", userId="u2", traits={"title": "CEO"}),
        at(6, type="alias", previousId="nobody-yet", userId="u2"),
    ]


def check(sim: Any, cf: dict[str, str]) -> None:
    [contact] = sim.contacts()
    assert contact[f"custom.{cf['user']}"] == "u2"
    assert (contact["name"], contact["title"]) == ("Dee", "CEO")
    assert [e["email"] for e in contact["emails"]] == ["u2@x.example", "v7@x.example"]
    assert [p["phone"] for p in contact["phones"]] == ["+14155550100"]
    assert len(sim.leads()) == 1


def test_a_batch_run_merges_the_visitor_into_the_account_between_their_events(sim, tmp_path, monkeypatch):
    config, cf = sim_config(sim, tmp_path, MAPPINGS)
    write_jsonl(tmp_path / "events.jsonl", events())
    audit = tmp_path / "audit.jsonl"
    assert (
        run_files(sim, config, str(tmp_path / "events.jsonl"), tmp_path, monkeypatch, audit_log=str(audit))
        == 0
    )
    check(sim, cf)
    written = read_lines(audit)
    intents = [line["intent"] for line in written if "intent" in line]  # each merge and deletion, before it was sent
    lines = [line for line in written if "intent" not in line]
    changes = [c for line in lines for c in line.get("changes") or []]
    assert [
        c["action"]
        for c in changes
        if c["object"] in ("lead", "contact") and c["action"] in ("merge", "delete")
    ] == [
        "merge",
        "delete",
    ]
    assert intents == [{k: v for k, v in c.items() if k != "applied"} for c in changes if c["action"] in ("merge", "delete")]
    outcomes = {tuple(line["event_ids"]): line["outcome"] for line in lines}
    assert outcomes[("m6",)] == "unchanged"  # nothing carries that previous id


@pytest.mark.usefixtures("pubsub_short_pulls")
def test_a_streaming_run_applies_the_alias_too(sim, pubsub_emulator, tmp_path, monkeypatch):
    config, cf = sim_config(
        sim,
        tmp_path,
        {
            **MAPPINGS,
            "pipeline": {
                "batch_size": 50,
                "flush_seconds": 0.5,
                "window": {"kind": "processing", "seconds": 1},
            },
        },
    )
    payloads = [json.dumps(e).encode() for e in events()]
    audit = tmp_path / "audit.jsonl"
    run_pubsub(
        sim,
        pubsub_emulator,
        tmp_path,
        monkeypatch,
        config,
        payloads,
        lambda: len(read_lines(audit)) >= 6 or _done(sim, cf),
    )
    check(sim, cf)


def _done(sim: Any, cf: dict[str, str]) -> bool:
    contacts = sim.contacts()
    return len(contacts) == 1 and contacts[0].get("title") == "CEO"
