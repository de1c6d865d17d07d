"""Alias, branch by branch, against the simulator: re-key, merge contacts, merge leads, refusals."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from closecrm.events.collapse import collapse
from closecrm.model import Flags, Settings, UpsertRequest
from pipeline.plan import change_text, planned_writes
from tests.engine.conftest import CloseEnv

MERGING = Flags(allow_merging=True)


def alias(previous: str, user: str, flags: Flags = Flags(), second: int = 0) -> UpsertRequest:
    return UpsertRequest(
        alias_previous_id=previous,
        contact_user_id=user,
        flags=flags,
        timestamp=f"2026-11-01T00:00:{second:02d}Z",
        event_ids=(f"alias{second}",),
    )


def contact(
    close: CloseEnv, user: str | None, *emails: str, name: str | None = None, **more: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {"emails": [{"email": e, "type": "office"} for e in emails], **more}
    if user:
        doc[close.user_cf] = user
    if name:
        doc["name"] = name
    return doc


def lead(close: CloseEnv, company: str | None, *contacts: dict[str, Any], **more: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"contacts": list(contacts), **more}
    if company:
        doc[close.company_cf] = company
    return doc


def users(close: CloseEnv) -> list[tuple[str | None, tuple[str, ...], str]]:
    """(user id, emails, lead id) of every contact."""
    return sorted(
        (c.get(close.user_cf), tuple(e["email"] for e in c["emails"]), c["lead_id"])
        for c in close.sim.contacts()
    )


def test_nothing_under_the_previous_id_is_unchanged(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, contact(close, "u2", "u2@x.example")))
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "unchanged"
    assert len(close.sim.contacts()) == 1


def test_the_new_id_unknown_rekeys_every_contact_of_the_previous_id(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, "anon-1", "a@x.example")),
        lead(close, None, contact(close, "anon-1", "b@x.example")),
    )
    [out] = close.one(alias("anon-1", "u2"))
    assert (out.label, out.branch) == ("updated", "alias_rekey")
    assert [u for u, _, _ in users(close)] == ["u2", "u2"]


def test_rekeying_is_held_back_when_updating_contacts_is_not_allowed(close: CloseEnv) -> None:
    close.seed_leads(lead(close, None, contact(close, "anon-1", "a@x.example")))
    [out] = close.one(alias("anon-1", "u2", Flags(allow_updating_existing_contacts=False)))
    assert out.label == "skipped:updating_existing_contacts_not_allowed"
    assert [u for u, _, _ in users(close)] == ["anon-1"]


def test_both_found_without_the_flag_is_skipped_and_nothing_changes(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, "anon-1", "a@x.example"), contact(close, "u2", "u2@x.example"))
    )
    before = users(close)
    [out] = close.one(alias("anon-1", "u2"))
    assert out.label == "skipped:merging_not_allowed"
    assert users(close) == before


def test_both_under_one_lead_appends_the_lists_and_deletes_the_previous_contact(close: CloseEnv) -> None:
    close.seed_leads(
        lead(
            close,
            None,
            contact(close, "u2", "u2@x.example", date_created="2020-01-02T00:00:00+00:00"),
            contact(close, "anon-1", "a@x.example", "U2@x.example", phones=[{"phone": "+14155550100"}]),
        )
    )
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert (out.label, out.branch) == ("updated", "alias_merge")
    [kept] = close.sim.contacts()
    assert kept[close.user_cf] == "u2"
    assert [e["email"] for e in kept["emails"]] == ["u2@x.example", "a@x.example"]
    assert [p["phone"] for p in kept["phones"]] == ["+14155550100"]
    deleted = [c for c in out.changes if c["action"] == "delete"]
    assert [(c["object"], c["merged_into"]) for c in deleted] == [("contact", kept["id"])]
    assert deleted[0]["old"]["emails"]  # what was deleted, to undo it by hand


def test_different_leads_without_company_ids_are_merged_then_the_contact(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, "u2", "u2@x.example"), name="Mine"),
        lead(close, None, contact(close, "anon-1", "a@x.example"), contact(close, "other", "o@x.example")),
    )
    [destination] = [x for x in close.leads() if x.get("name") == "Mine"]
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "updated"
    assert [x["id"] for x in close.leads()] == [destination["id"]]
    assert users(close) == [
        ("other", ("o@x.example",), destination["id"]),
        ("u2", ("u2@x.example", "a@x.example"), destination["id"]),
    ]
    merges = [c for c in out.changes if c["action"] == "merge"]
    assert [m["into"] for m in merges] == [destination["id"]]
    assert [(m["source"], m["destination"], m["merge_status"]) for m in close.sim.merges()] == [
        (merges[0]["id"], destination["id"], "completed")
    ]


def test_one_company_lead_and_one_without_are_merged(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, "co1", contact(close, "u2", "u2@x.example")),
        lead(close, None, contact(close, "anon-1", "a@x.example")),
    )
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "updated"
    assert [x.get(close.company_cf) for x in close.leads()] == ["co1"]


def test_leads_of_different_companies_are_never_merged(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, "co1", contact(close, "u2", "u2@x.example")),
        lead(close, "co2", contact(close, "anon-1", "a@x.example")),
    )
    before = users(close)
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "skipped:alias_across_companies"
    assert users(close) == before and len(close.leads()) == 2
    assert close.sim.merges() == []


def test_an_alias_needs_the_user_id_field(close: CloseEnv) -> None:
    close.settings = Settings(close.settings.lead_custom_field_id_for_company_id, "")
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "skipped:no_user_id_field"


def test_a_lead_merge_that_finishes_later_still_ends_with_one_lead(close: CloseEnv) -> None:
    close.sim.configure(merge_delay_seconds=0.3)
    close.seed_leads(
        lead(close, None, contact(close, "u2", "u2@x.example")),
        lead(close, None, contact(close, "anon-1", "a@x.example"), contact(close, "other", "o@x.example")),
    )
    [out] = close.one(alias("anon-1", "u2", MERGING))
    assert out.label == "updated"
    time.sleep(0.5)
    assert len(close.leads()) == 1
    assert sorted(u for u, _, _ in users(close)) == ["other", "u2"]


def test_the_dry_run_plans_the_merges_and_deletions_and_writes_nothing(close: CloseEnv) -> None:
    close.seed_leads(
        lead(close, None, contact(close, "u2", "u2@x.example")),
        lead(close, None, contact(close, "anon-1", "a@x.example")),
    )
    before = (users(close), len(close.leads()))
    [planned] = close.one(alias("anon-1", "u2", MERGING), dry_run=True)
    assert (users(close), len(close.leads())) == before
    [done] = close.one(alias("anon-1", "u2", MERGING))

    def plan(o: Any) -> list[tuple[str, str]]:
        return sorted((c["object"], c["action"]) for c in o.changes)

    assert plan(planned) == plan(done) == [("contact", "delete"), ("contact", "update"), ("lead", "merge")]
    # what `close-sync run --dry-run` prints and counts for it
    assert planned_writes([planned.to_json()]) == Counter({"lead merge": 1, "contact delete": 1, "contact update": 1})
    shown = [change_text(c) for c in planned.changes]
    assert any(t.startswith("lead lead_") and " merge into lead_" in t for t in shown)
    assert any(" delete (merged into cont_" in t and "a@x.example" in t for t in shown)


@pytest.mark.parametrize("way", ["batch", "one"])
def test_an_alias_applies_between_the_events_of_both_ids_in_event_time(close: CloseEnv, way: str) -> None:
    """anon-1's event before the alias lands on the previous contact; u2's after it on the merged one."""
    close.seed_leads(lead(close, None, contact(close, "u2", "u2@x.example")))
    before = UpsertRequest(
        contact_user_id="anon-1",
        contact_emails=("a@x.example",),
        contact_name="Anon",
        timestamp="2026-11-01T00:00:01Z",
        event_ids=("e1",),
    )
    late = UpsertRequest(
        contact_user_id="u2", contact_title="CEO", timestamp="2026-11-01T00:00:09Z", event_ids=("e9",)
    )
    reqs = collapse([late, alias("anon-1", "u2", MERGING, second=5), before])
    if way == "batch":
        close.batch(reqs)
    else:
        close.one(*reqs)
    [kept] = close.sim.contacts()
    assert (kept[close.user_cf], kept.get("title")) == ("u2", "CEO")
    assert [e["email"] for e in kept["emails"]] == ["u2@x.example", "a@x.example"]
