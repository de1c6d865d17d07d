"""An alias in a stream of lookup batches: a later batch that searched before the alias removed
records must not act on them (the removal overlaps the next batch's searches)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from closecrm.engine import UpsertEngine
from closecrm.engine.writes.layer import Writes
from closecrm.model import Flags, UpsertRequest
from tests.engine.conftest import CloseEnv

MERGING = Flags(allow_merging=True)


@pytest.fixture
def slow_removals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletes and merges take long enough that the next batch searches meanwhile."""
    for name in ("delete_contact", "merge_leads"):
        original = getattr(Writes, name)

        async def slow(self: Writes, *args: Any, _original: Any = original) -> None:
            await asyncio.sleep(0.3)
            await _original(self, *args)

        monkeypatch.setattr(Writes, name, slow)


def stream(close: CloseEnv, reqs: list[UpsertRequest]) -> list[str]:
    async def go(engine: UpsertEngine) -> list[str]:
        return [o.label async for outs in engine.upsert_stream([[r] for r in reqs], depth=2) for o in outs]

    return close.run(go)


def contact(close: CloseEnv, user: str, day: int) -> dict[str, Any]:
    return {close.user_cf: user, "date_created": f"2020-01-{day:02d}T00:00:00+00:00"}


@pytest.mark.usefixtures("slow_removals")
def test_an_alias_back_after_a_merge_finds_the_merged_contact_only(close: CloseEnv) -> None:
    close.seed_leads({"contacts": [contact(close, "u1", 1), contact(close, "a1", 2)]})
    labels = stream(
        close,
        [
            UpsertRequest(alias_previous_id="u1", contact_user_id="a1", flags=MERGING),
            UpsertRequest(alias_previous_id="a1", contact_user_id="u1", flags=MERGING),
        ],
    )
    assert labels == ["updated", "updated"]  # merged into a1, then a1 re-keyed to u1
    assert [c.get(close.user_cf) for c in close.sim.contacts()] == ["u1"]


@pytest.mark.usefixtures("slow_removals")
def test_the_previous_ids_next_event_creates_a_contact_instead_of_writing_to_the_deleted_one(
    close: CloseEnv,
) -> None:
    close.seed_leads({"contacts": [contact(close, "u1", 1), contact(close, "u2", 2)]})
    labels = stream(
        close,
        [
            UpsertRequest(alias_previous_id="u2", contact_user_id="u1", flags=MERGING),
            UpsertRequest(contact_user_id="u2", contact_title="CEO"),
        ],
    )
    assert labels == ["updated", "created"]
    assert sorted(c.get(close.user_cf) for c in close.sim.contacts()) == ["u1", "u2"]


@pytest.mark.usefixtures("slow_removals")
def test_a_contact_of_a_merged_away_lead_is_found_under_the_lead_it_went_into(close: CloseEnv) -> None:
    close.seed_leads(
        {"name": "Kept", "contacts": [contact(close, "u1", 1)]},
        {"contacts": [contact(close, "a1", 2), contact(close, "other", 3)]},
    )
    labels = stream(
        close,
        [
            UpsertRequest(alias_previous_id="a1", contact_user_id="u1", flags=MERGING),
            UpsertRequest(contact_user_id="other", lead_name="Renamed"),
        ],
    )
    assert labels == ["updated", "updated"]
    [kept] = close.sim.leads()
    assert kept["name"] == "Renamed"
    assert sorted(c.get(close.user_cf) for c in close.sim.contacts()) == ["other", "u1"]
