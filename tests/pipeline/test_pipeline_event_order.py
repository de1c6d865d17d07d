"""A bounded run applies its requests in event time across flushes, whatever size they are cut to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.engine.conftest import FAST
from tests.pipeline.helpers import read_lines, run_files, sim_config, write_jsonl

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
UNRELATED = 1000
MAPPINGS = {
    "mappings": [
        {"name": "Identify", "preset": "identify"},
        {"name": "Alias", "preset": "alias", "allow_merging": True},
    ]
}


def events() -> list[dict[str, Any]]:
    """P becomes Q at 00:00:10; a thousand other people identify; P becomes U an hour later (by then
    nobody carries P). The file is in event order, but the shuffles before the writer are not."""

    def at(seconds: int, message: str, **event: Any) -> dict[str, Any]:
        return {"messageId": message, "timestamp": (T0 + timedelta(seconds=seconds)).isoformat(), **event}

    others = [
        at(
            11 + n,
            f"i{n}",
            type="identify",
            userId=f"other-{n}",
            traits={"email": f"other{n}@acme.example", "company": {"id": "acme"}},
        )
        for n in range(UNRELATED)
    ]
    return [
        at(10, "early", type="alias", previousId="P", userId="Q"),
        *others,
        at(3600, "late", type="alias", previousId="P", userId="U"),
    ]


def seed(sim: Any, cf: dict[str, str]) -> None:
    """cont_X (user P) and U's contact, under two leads without a company id."""
    sim.seed(
        {
            "leads": [
                {
                    "name": "X's",
                    "date_created": "2020-01-01T00:00:00+00:00",
                    "contacts": [
                        {"name": "X", "emails": [{"email": "x@p.example"}], f"custom.{cf['user']}": "P"}
                    ],
                },
                {
                    "name": "U's",
                    "date_created": "2020-01-02T00:00:00+00:00",
                    "contacts": [
                        {"name": "Ursula", "emails": [{"email": "u@u.example"}], f"custom.{cf['user']}": "U"}
                    ],
                },
            ]
        }
    )


@pytest.mark.parametrize("batch_size", [1, 200])
def test_a_later_alias_in_an_earlier_flush_waits_for_the_earlier_one(sim, tmp_path, monkeypatch, batch_size):
    """One at a time: cont_X is re-keyed to Q at 00:00:10, so at 01:00:00 nobody carries P and the
    alias to U changes nothing. Applied in arrival order, the alias to U merged X into U's contact."""
    sim.configure(**FAST)  # a thousand people: pacing at Close's default rates would take minutes
    config, cf = sim_config(sim, tmp_path, {**MAPPINGS, "pipeline": {"batch_size": batch_size}})
    seed(sim, cf)
    [x] = [c for c in sim.contacts() if c["name"] == "X"]
    path = write_jsonl(tmp_path / "events.jsonl", events())
    audit = tmp_path / "audit.jsonl"
    assert run_files(sim, config, str(path), tmp_path, monkeypatch, audit_log=str(audit)) == 0

    contacts = {c["id"]: c for c in sim.contacts()}
    assert contacts[x["id"]][f"custom.{cf['user']}"] == "Q"  # cont_X re-keyed, not deleted
    assert [c["name"] for c in contacts.values() if c.get(f"custom.{cf['user']}") == "U"] == ["Ursula"]
    assert len(contacts) == 2 + UNRELATED
    leads = sim.leads()
    assert len(leads) == 3
    assert sorted(lead["name"] for lead in leads if not lead.get(f"custom.{cf['company']}")) == ["U's", "X's"]
    assert sim.merges() == []
    outcomes = {tuple(line["event_ids"]): line["outcome"] for line in read_lines(audit)}
    assert (outcomes[("early",)], outcomes[("late",)]) == ("updated", "unchanged")
