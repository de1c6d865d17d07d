"""A lead merge Close finishes later: when its answer is lost, the source lead still answers 200 while
the merge's LeadMerge activity says ``in_progress``. The engine waits for that status instead of
sending the merge again."""

from __future__ import annotations

import itertools

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_alias_faults import DELETE, MERGE, MERGING, contact, watch

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("outcome", [502, "drop"])
def test_a_merge_still_in_progress_when_its_answer_is_lost_is_sent_once(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch, outcome: int | str
) -> None:
    seen = watch(close, monkeypatch)
    close.seed_leads(
        {"name": "Mine", "contacts": [contact(close, "u2", "a@x.example", n=1)]},
        {"contacts": [contact(close, "anon-1", "A@x.example", n=2), contact(close, "other", "o@x.example", n=3)]},
    )
    close.sim.configure(merge_delay_seconds=0.6)
    seen.plan = {MERGE: itertools.repeat(("after", outcome))}

    async def go(engine: UpsertEngine) -> Outcome:
        return await engine.upsert_one(UpsertRequest(alias_previous_id="anon-1", contact_user_id="u2", flags=MERGING))

    out = close.run(go, client_kw={"backoff_base": 0.01})
    assert out.label == "updated", out
    assert seen.calls[MERGE] == 1
    assert [m["merge_status"] for m in close.sim.merges()] == ["completed"]
    assert seen.calls[DELETE] == 1
    [lead] = close.leads()
    assert sorted(c[close.user_cf] for c in lead["contacts"]) == ["other", "u2"]
