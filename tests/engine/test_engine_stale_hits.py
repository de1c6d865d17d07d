"""A search hit is a rumour: a second run within the search lag must act only on what a read by id says.

Run 1 re-keys contact X from user id P to Q (alias P→Q). Run 2 starts seconds later, its own engine
on the same created-id ledger (as a new process would), while Close's search still shows X as P.
Each request of run 2 must end as it would one at a time on Close's real state, where no contact
carries P any more. And a contact an alias deletes is in the audit whole, custom fields included.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from closecrm.api.client import CloseClient
from closecrm.engine import UpsertEngine
from closecrm.engine.writes.ledger import CreatedIdLedger
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_alias import MERGING, alias, contact, lead

pytestmark = pytest.mark.integration

LAG = 30.0


def run_engine(
    env: CloseEnv, directory: Path, *reqs: UpsertRequest, dry_run: bool = False, batch: bool = False
) -> list[Outcome]:
    """A new engine with its own ledger instance on ``directory``: a new run in a new process."""

    async def main() -> list[Outcome]:
        async with CloseClient(env.sim.base_url, env.sim.api_key) as client:
            engine = UpsertEngine(client, env.settings, ledger=CreatedIdLedger(str(directory)))
            if batch:
                return await engine.upsert_batch(list(reqs), dry_run=dry_run)
            return [await engine.upsert_one(r, dry_run=dry_run) for r in reqs]

    return asyncio.run(main())


def by_id(env: CloseEnv, contact_id: str) -> dict[str, Any]:
    [found] = [c for c in env.sim.contacts() if c["id"] == contact_id]
    return found


def rekeyed_in_run_one(env: CloseEnv, ledger: Path, *others: dict[str, Any]) -> str:
    """X carries P; run 1 re-keys it to Q while search lags: search still says X is P. X's id."""
    env.seed_leads(lead(env, None, contact(env, "P", "pete@x.example", name="Pete")), *others)
    env.sim.configure(search_lag=LAG)
    [first] = run_engine(env, ledger, alias("P", "Q"))
    assert first.branch == "alias_rekey" and first.label == "updated"
    [x] = first.contact_ids
    assert by_id(env, x)[env.user_cf] == "Q"
    return x


def test_an_identify_by_a_stale_user_id_does_not_rename_or_restamp_the_rekeyed_contact(
    close: CloseEnv, tmp_path: Path
) -> None:
    x = rekeyed_in_run_one(close, tmp_path)
    [second] = run_engine(close, tmp_path, UpsertRequest(contact_user_id="P", contact_name="Pete Two"))
    after = by_id(close, x)
    assert (after[close.user_cf], after.get("name")) == ("Q", "Pete")  # X is untouched
    # One at a time there is no P contact: the person is created, as a run on settled search would.
    assert second.label == "created" and x not in second.contact_ids
    assert [c.get("name") for c in close.contacts_with_user("P")] == ["Pete Two"]


def test_an_alias_by_a_stale_user_id_does_not_restamp_the_rekeyed_contact(
    close: CloseEnv, tmp_path: Path
) -> None:
    x = rekeyed_in_run_one(close, tmp_path)
    [second] = run_engine(close, tmp_path, alias("P", "W", second=1))
    assert second.label == "unchanged"
    assert by_id(close, x)[close.user_cf] == "Q"
    assert not close.contacts_with_user("W")
    assert not [c for c in second.changes if c.get("old") == "P"]  # nothing recorded as re-keyed from P


def test_an_alias_merge_by_a_stale_user_id_deletes_nothing(close: CloseEnv, tmp_path: Path) -> None:
    x = rekeyed_in_run_one(close, tmp_path, lead(close, None, contact(close, "U", "u@x.example", name="Una")))
    leads_before = sorted(lead["id"] for lead in close.leads())
    [second] = run_engine(close, tmp_path, alias("P", "U", MERGING, second=1))
    assert second.label == "unchanged"
    assert by_id(close, x)[close.user_cf] == "Q"  # not deleted
    assert sorted(lead["id"] for lead in close.leads()) == leads_before  # its lead not merged away
    assert [c["action"] for c in second.changes if c["action"] in ("merge", "delete")] == []


def test_a_batch_and_a_dry_run_plan_the_same_on_a_stale_hit(close: CloseEnv, tmp_path: Path) -> None:
    """In one batch: the identify creates a P contact (X is not one), which the alias then re-keys."""
    x = rekeyed_in_run_one(close, tmp_path)
    reqs = (UpsertRequest(contact_user_id="P", contact_name="Pete Two"), alias("P", "W", second=1))
    plan = run_engine(close, tmp_path, *reqs, dry_run=True, batch=True)
    assert [(o.label, o.branch) for o in plan] == [("created", "nothing_found"), ("updated", "alias_rekey")]
    assert plan[1].contact_ids == plan[0].contact_ids
    assert by_id(close, x)[close.user_cf] == "Q" and not close.contacts_with_user("P")
    done = run_engine(close, tmp_path, *reqs, batch=True)
    assert [(o.label, o.branch) for o in done] == [(o.label, o.branch) for o in plan]
    assert done[1].contact_ids == done[0].contact_ids and x not in done[0].contact_ids
    after = by_id(close, x)
    assert (after[close.user_cf], after.get("name")) == ("Q", "Pete")
    assert [c.get("name") for c in close.contacts_with_user("W")] == ["Pete Two"]


def test_an_identify_by_a_key_that_did_not_move_makes_no_extra_read(close: CloseEnv, tmp_path: Path) -> None:
    """A ledger that flags nothing about the hit: the update is decided on the hit, as before."""
    rekeyed_in_run_one(close, tmp_path, lead(close, None, contact(close, "V", name="Vic")))
    [out] = run_engine(close, tmp_path, UpsertRequest(contact_user_id="V", contact_title="CTO"))
    assert out.label == "updated" and out.calls == 2  # the search and the PUT


def test_a_deleted_contact_is_in_the_audit_whole_as_read_by_id(close: CloseEnv) -> None:
    plan_cf = close.sim.create_custom_field("contact", "Plan")
    close.seed_leads(
        lead(close, None, contact(close, "U", "u@x.example", name="Una")),
        lead(
            close,
            None,
            contact(close, "P", "p@x.example", name="Pete", title="CTO", **{f"custom.{plan_cf}": "gold"}),
        ),
    )
    [p] = close.contacts_with_user("P")
    [out] = close.one(alias("P", "U", MERGING))
    assert out.branch == "alias_merge"
    [deleted] = [c for c in out.changes if c["action"] == "delete"]
    old = deleted["old"]
    assert old[close.user_cf] == "P" and old[f"custom.{plan_cf}"] == "gold"
    assert (old["name"], old["title"], old["lead_id"]) == ("Pete", "CTO", p["lead_id"])
    assert [e["email"] for e in old["emails"]] == ["p@x.example"]


def test_an_alias_rekey_acts_on_a_read_by_id_even_when_the_ledger_knows_nothing(
    close: CloseEnv, tmp_path: Path
) -> None:
    """Another writer (not this job: nothing in the ledger) re-keys X from P to R; search still says P."""
    close.seed_leads(lead(close, None, contact(close, "P", "pete@x.example", name="Pete")))
    [x] = [c["id"] for c in close.contacts_with_user("P")]
    close.sim.configure(search_lag=LAG)
    close.sim.simulator.store.update_contact(x, {close.user_cf: "R"})
    [out] = run_engine(close, tmp_path, alias("P", "W", second=2))
    assert out.label == "unchanged" and by_id(close, x)[close.user_cf] == "R"
    assert not [c for c in out.changes if c.get("old") == "P"]


def test_a_contact_a_lead_merge_moved_is_found_under_the_lead_it_went_to(
    close: CloseEnv, tmp_path: Path
) -> None:
    """Run 1 merges P's lead into U's (co2) and Z moves with it; search still shows Z under the old lead."""
    close.seed_leads(
        lead(close, "co2", contact(close, "U", "u@x.example", name="Una")),
        lead(close, None, contact(close, "P", "p@x.example"), contact(close, "V", "v@x.example", name="Vic")),
    )
    [z] = [c["id"] for c in close.contacts_with_user("V")]
    close.sim.configure(search_lag=LAG)
    [first] = run_engine(close, tmp_path, alias("P", "U", MERGING))
    assert first.branch == "alias_merge" and len(close.leads()) == 1
    identify = UpsertRequest(lead_company_id="co2", contact_user_id="V", contact_title="CTO")
    [second] = run_engine(close, tmp_path, identify)
    # One at a time, Z is under co2's lead: it is updated, not created again there.
    assert second.label == "updated" and second.contact_ids == (z,)
    assert [c.get("title") for c in close.contacts_with_user("V")] == ["CTO"]


def test_what_the_job_took_away_is_in_the_ledger_hashed_and_read_by_the_next_run(tmp_path: Path) -> None:
    writer = CreatedIdLedger(str(tmp_path))
    writer.record("contact", "cont_1", ["user:P", "email:pete@x.example"])
    writer.left("contact", "cont_1", ["user:P"])
    writer.removed("contact", "cont_2", ["user:U2"])
    writer.removed("lead", "lead_1", [])
    writer.close()
    text = "".join(p.read_text() for p in tmp_path.glob("*.ids"))
    assert "pete" not in text and '"P"' not in text and "U2" not in text
    reader = CreatedIdLedger(str(tmp_path))
    reader.refresh()
    assert reader.left_lately("user:P", "cont_1") and not reader.left_lately("email:pete@x.example", "cont_1")
    assert reader.ids("user:P") == () and reader.ids("email:pete@x.example") == ("cont_1",)
    assert reader.removed_lately("cont_2") and reader.left_lately("user:U2", "cont_2")
    assert reader.removed_lately("lead_1") and not reader.removed_lately("cont_1")
    # The key written back onto the record: a hint again, no longer one that left.
    reader.record("contact", "cont_1", ["user:P"])
    assert reader.ids("user:P") == ("cont_1",) and not reader.left_lately("user:P", "cont_1")


def test_a_record_the_ledger_never_held_can_be_taken_away_while_its_key_holds_another(tmp_path: Path) -> None:
    """A seeded contact the job never created is deleted while the ledger knows its key on another
    record: the leaving is recorded and the other record's hint stands."""
    ledger = CreatedIdLedger(str(tmp_path))
    ledger.record("contact", "cont_other", ["user:V"])
    ledger.removed("contact", "cont_seeded", ["user:V", "email:v@x.example"])
    assert ledger.removed_lately("cont_seeded") and ledger.left_lately("user:V", "cont_seeded")
    assert ledger.ids("user:V") == ("cont_other",)
    ledger.close()


def test_what_the_job_took_away_expires_with_the_ledger(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    writer = CreatedIdLedger(str(tmp_path), clock=lambda: now[0], ttl_seconds=100.0, roll_seconds=10.0)
    writer.left("contact", "cont_1", ["user:P"])
    writer.removed("lead", "lead_1", ["company:co1"])
    writer.close()
    now[0] += 99.0
    reader = CreatedIdLedger(str(tmp_path), clock=lambda: now[0], ttl_seconds=100.0, roll_seconds=10.0)
    reader.refresh()
    assert reader.left_lately("user:P", "cont_1") and reader.removed_lately("lead_1")
    now[0] += 2.0
    assert not reader.left_lately("user:P", "cont_1") and not reader.removed_lately("lead_1")
    assert not reader.left_lately("company:co1", "lead_1")
