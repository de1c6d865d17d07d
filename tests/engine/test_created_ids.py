"""The created-id ledger: what one engine created, another (a re-run, a restart, the next bundle's writer) finds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from closecrm.api.client import CloseClient
from closecrm.engine import UpsertEngine
from closecrm.engine.writes.cache import IdCache
from closecrm.engine.writes.ledger import CreatedIdLedger, key_digest, ledger_dir, namespace
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_branches import contact, lead


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ledger(directory: Path | str, clock: Clock | None = None, **kw: object) -> CreatedIdLedger:
    return CreatedIdLedger(str(directory), clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def test_what_one_writer_records_another_reads(tmp_path: Path) -> None:
    a, b = ledger(tmp_path), ledger(tmp_path)
    a.record("lead", "lead_1", ["company:acme"])
    a.record("contact", "cont_1", ["user:u1", "email:ann@acme.com"])
    assert b.refresh() == 3
    assert b.ids("company:acme") == ("lead_1",)
    assert b.ids("email:ann@acme.com") == ("cont_1",)
    assert b.ids("user:u2") == ()
    a.record("contact", "cont_2", ["user:u2"])  # appended later: the next refresh reads only that
    assert b.refresh() == 4 and b.ids("user:u2") == ("cont_2",)
    assert len(list(tmp_path.glob("*.ids"))) == 1


def test_each_writer_has_its_own_file_and_readers_take_the_union(tmp_path: Path) -> None:
    for i in range(3):
        ledger(tmp_path).record("contact", f"cont_{i}", ["email:shared@x.com"])
    reader = ledger(tmp_path)
    reader.refresh()
    assert sorted(reader.ids("email:shared@x.com")) == ["cont_0", "cont_1", "cont_2"]
    assert len(list(tmp_path.glob("*.ids"))) == 3


def test_keys_are_stored_hashed_and_nothing_else_is_kept(tmp_path: Path) -> None:
    ledger(tmp_path).record("contact", "cont_1", ["user:u_secret", "email:ann@acme.com"])
    [entry, _] = [json.loads(line) for f in tmp_path.glob("*.ids") for line in f.read_text().splitlines()]
    assert entry == {
        "k": key_digest("user:u_secret").hex(),
        "t": "user",
        "id": "cont_1",
        "kind": "contact",
        "at": entry["at"],
    }
    assert "u_secret" not in "".join(f.read_text() for f in tmp_path.glob("*.ids"))


def test_torn_and_unfinished_lines_are_skipped_until_complete(tmp_path: Path) -> None:
    path = tmp_path / "1800000000-1-abc.ids"
    good = json.dumps(
        {"k": key_digest("user:u1").hex(), "t": "user", "id": "cont_1", "kind": "contact", "at": 1.8e9}
    )
    path.write_text('{"k": "zz", "id"\n' + "garbage\n" + good + "\n" + good[:20])
    reader = ledger(tmp_path)
    reader.refresh()
    assert reader.ids("user:u1") == ("cont_1",)
    assert len(reader) == 1


def test_entries_expire_after_the_ttl_and_old_files_are_deleted(tmp_path: Path) -> None:
    clock = Clock()
    writer = ledger(tmp_path, clock, ttl_seconds=100.0, roll_seconds=10.0)
    writer.record("lead", "lead_old", ["company:old"])
    clock.now += 60
    writer.record("lead", "lead_new", ["company:new"])  # a new file: the first is 60 s old
    assert len(list(tmp_path.glob("*.ids"))) == 2
    clock.now += 50  # lead_old is 110 s old, lead_new 50 s
    reader = ledger(tmp_path, clock, ttl_seconds=100.0, roll_seconds=10.0)
    reader.refresh()
    assert reader.ids("company:old") == () and reader.ids("company:new") == ("lead_new",)
    assert writer.ids("company:old") == ()  # the writer's own memory expires too
    clock.now += 15  # the first file's newest possible entry is past the ttl: a long-lived reader deletes it
    reader.refresh()
    assert len(list(tmp_path.glob("*.ids"))) == 1


def test_the_newest_entries_are_kept_up_to_the_bound(tmp_path: Path) -> None:
    clock = Clock()
    writer = ledger(tmp_path, clock)
    for i in range(10):
        clock.now += 1
        writer.record("lead", f"lead_{i}", [f"company:c{i}"])
    reader = ledger(tmp_path, clock, max_entries=4)
    assert reader.refresh() == 4
    assert [reader.ids(f"company:c{i}") for i in (5, 6, 9)] == [(), ("lead_6",), ("lead_9",)]


def test_forget_and_the_id_cache_in_front(tmp_path: Path) -> None:
    writer = ledger(tmp_path)
    writer.record("contact", "cont_1", ["email:a@x.com"])
    remembered = ledger(tmp_path)
    remembered.refresh()
    cache = IdCache(10, remembered=remembered)
    cache.add("email:a@x.com", "cont_search_hit")  # what the ledger remembers is older: it comes first
    assert cache.ids("email:a@x.com") == ("cont_1", "cont_search_hit")
    cache.forget("cont_1", ["email:a@x.com"])  # e.g. a 404
    assert cache.ids("email:a@x.com") == ("cont_search_hit",)
    assert remembered.ids("email:a@x.com") == ()


def test_a_ledger_that_cannot_be_written_never_fails_the_caller(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    broken = ledger(blocker / "ledger")
    with caplog.at_level(logging.WARNING):
        broken.record("lead", "lead_1", ["company:acme"])
        broken.record("lead", "lead_2", ["company:beta"])
        assert broken.refresh() == 2  # still remembered in memory
    assert [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()] != []
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_an_object_store_ledger_writes_one_object_per_flush(tmp_path: Path) -> None:
    writer = ledger(tmp_path, object_store=True)
    writer.record("lead", "lead_1", ["company:acme"])
    reader = ledger(tmp_path, object_store=True)
    assert reader.refresh() == 0  # buffered
    writer.flush()
    writer.record("lead", "lead_2", ["company:beta"])
    writer.close()
    assert len(list(tmp_path.glob("*.ids"))) == 2
    assert reader.refresh() == 2 and reader.ids("company:beta") == ("lead_2",)


def test_the_ledger_directory_is_namespaced_by_the_close_url_only(tmp_path: Path) -> None:
    a = ledger_dir(str(tmp_path), "https://api.close.com/api/v1/")
    assert a == ledger_dir(str(tmp_path), "https://API.close.com/api/v1")
    assert a != ledger_dir(str(tmp_path), "http://127.0.0.1:8765/api/v1/")
    assert a == str(tmp_path / "created-ids" / namespace("https://api.close.com/api/v1"))
    assert ledger_dir("gs://bucket/dead/", "https://api.close.com/api/v1/").startswith(
        "gs://bucket/dead/created-ids/"
    )


# ------------------------------------------------------------- the engine


def run_engine(env: CloseEnv, directory: Path, *reqs: UpsertRequest, dry_run: bool = False) -> list[Outcome]:
    """A new engine (as in a new process: its own ledger instance on the same directory)."""
    import asyncio

    async def main() -> list[Outcome]:
        async with CloseClient(env.sim.base_url, env.sim.api_key) as client:
            engine = UpsertEngine(client, env.settings, ledger=CreatedIdLedger(str(directory)))
            return [await engine.upsert_one(r, dry_run=dry_run) for r in reqs]

    return asyncio.run(main())


@pytest.mark.integration
def test_an_engine_finds_what_an_earlier_engine_created_while_search_lags(
    close: CloseEnv, tmp_path: Path
) -> None:
    close.sim.configure(search_lag=30.0)
    req = UpsertRequest(lead_company_id="acme", contact_user_id="u1", contact_emails=("ann@acme.com",))
    [first] = run_engine(close, tmp_path, req)
    assert first.label == "created"
    [again] = run_engine(close, tmp_path, req)
    assert again.label == "unchanged"
    anon = UpsertRequest(contact_emails=("ANN@acme.com",), contact_title="CTO")  # found by its email key
    [by_email] = run_engine(close, tmp_path, anon)
    assert by_email.label == "updated" and by_email.contact_ids == first.contact_ids
    other = UpsertRequest(lead_company_id="acme", contact_user_id="u2")  # a new contact under the lead
    [second] = run_engine(close, tmp_path, other)
    assert second.label == "created" and second.lead_ids == first.lead_ids
    [found] = run_engine(close, tmp_path, UpsertRequest(contact_user_id="u2", contact_title="CEO"))
    assert found.label == "updated" and found.contact_ids == second.contact_ids
    assert len(close.leads()) == 1 and len(close.sim.contacts()) == 2


@pytest.mark.integration
def test_a_key_written_onto_an_existing_record_is_remembered(close: CloseEnv, tmp_path: Path) -> None:
    close.seed_leads(lead(close, None, contact(close, None, "ann@acme.com"), name="Unowned"))
    close.sim.configure(search_lag=30.0)  # search will show neither the company id nor the user id
    adopt = UpsertRequest(lead_company_id="acme", contact_user_id="u1", contact_emails=("ann@acme.com",))
    [adopted] = run_engine(close, tmp_path, adopt)
    assert adopted.branch == "adopt_lead"
    [again] = run_engine(close, tmp_path, UpsertRequest(lead_company_id="acme", contact_user_id="u1"))
    assert again.label == "unchanged" and again.branch == "lead_by_company_id"
    assert len(close.leads()) == 1 and len(close.sim.contacts()) == 1


@pytest.mark.integration
def test_a_dry_run_reads_the_ledger_and_writes_nothing_to_it(close: CloseEnv, tmp_path: Path) -> None:
    close.sim.configure(search_lag=30.0)
    run_engine(close, tmp_path, UpsertRequest(lead_company_id="acme", contact_user_id="u1"))
    before = {p.name: p.read_text() for p in tmp_path.glob("*.ids")}
    [plan] = run_engine(
        close, tmp_path, UpsertRequest(lead_company_id="acme", contact_user_id="u2"), dry_run=True
    )
    assert plan.label == "created" and plan.branch == "lead_by_company_id"  # the lead was found
    assert {p.name: p.read_text() for p in tmp_path.glob("*.ids")} == before


@pytest.mark.parametrize(
    "entry",
    [
        {"k": "ab12", "t": "email", "id": "cont_1", "kind": "contact", "at": 1765100000.123456},
        {"id": 'lead_"quoted"\\', "kind": "lead", "at": 0.1, "removed": True},
        {"k": "00", "t": "user", "id": "cont_é\u2028\x00\U0001f600", "kind": "contact", "at": 12, "left": True},
        {"k": "00", "t": "user", "id": "cont_1", "kind": "contact", "at": 1e-7, "left": False},
        {"id": "x", "at": float("nan")},  # not finite: the encoder's own form
        {"id": None, "at": 1.0},  # not text: the encoder's own form
    ],
)
def test_a_line_is_what_the_json_encoder_writes(entry: dict) -> None:
    from closecrm.engine.writes.ledger import _line

    assert _line(entry) == json.dumps(entry, separators=(",", ":")) + "\n"
