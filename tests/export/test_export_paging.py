"""Keyset paging over time slices: every record once, whatever the page size, slice count and ties."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from closecrm.api.client import CloseClient
from closecrm.reverse_etl.export import SearchPager

pytestmark = pytest.mark.integration

T0 = datetime(2022, 5, 1, tzinfo=UTC)


def seed_leads(sim, n=330):
    """Leads whose date_created repeat: a run of 70 at one instant, pairs, and singles."""
    leads = []
    for i in range(n):
        if i < 70:
            created = T0 + timedelta(hours=1)
        elif i < 200:
            created = T0 + timedelta(minutes=(i // 2) * 7)
        else:
            created = T0 + timedelta(days=i, microseconds=i)
        leads.append({"id": f"lead_{i:04d}", "name": f"L{i}", "date_created": created.isoformat()})
    sim.seed({"leads": leads})
    return {x["id"] for x in leads}


def read_all(sim, *, slices, page_size, since=None, key="date_created"):
    async def go():
        async with CloseClient(sim.base_url, sim.api_key) as client:
            pager = SearchPager(client, "lead", key, ["id", "date_created", "date_updated"], since, page_size)
            docs = await pager.read_all(slices)
            return docs, client.counters()

    return asyncio.run(go())


@pytest.mark.parametrize(("slices", "page_size"), [(1, 200), (1, 25), (3, 25), (7, 10), (16, 50)])
def test_every_record_is_read_exactly_once(sim, slices, page_size):
    sim.configure(time_scale=200.0)
    ids = seed_leads(sim)
    docs, _ = read_all(sim, slices=slices, page_size=page_size)
    assert [d["id"] for d in docs] == [x["id"] for x in sim.leads()]  # each once, oldest first
    assert {d["id"] for d in docs} == ids


def test_more_records_at_one_instant_than_a_page_holds_are_read_with_a_short_cursor(sim):
    sim.configure(time_scale=200.0)
    ids = seed_leads(sim)
    docs, counters = read_all(sim, slices=1, page_size=20)
    assert {d["id"] for d in docs} == ids
    # 330 records, 20 a page: ~17 pages, plus the pages that re-read the records sharing a boundary date.
    assert counters["calls_by_group"]["search"] <= 2 + 17 + 10


def test_since_bounds_the_first_slice(sim):
    sim.configure(time_scale=200.0)
    seed_leads(sim)
    since = T0 + timedelta(days=300)
    docs, _ = read_all(sim, slices=4, page_size=10, since=since)
    assert docs and all(datetime.fromisoformat(d["date_created"]) >= since for d in docs)
    assert len(docs) == 30  # leads 300..329


def test_an_empty_organisation_costs_two_searches(sim):
    sim.configure(time_scale=200.0)
    docs, counters = read_all(sim, slices=4, page_size=200)
    assert docs == [] and counters["calls_by_group"] == {"search": 2}


def test_pacing_keeps_rate_limited_searches_near_zero(sim):
    """Limits on (16 searches per window, windows shrunk 4×): 8 slices at once still stay inside."""
    ids = seed_leads(sim, n=600)
    sim.configure(limits_enabled=True, time_scale=4.0)
    docs, counters = read_all(sim, slices=8, page_size=10)
    assert {d["id"] for d in docs} == ids
    stats = sim.stats()
    assert counters["calls_by_group"]["search"] >= 60  # enough calls for pacing to matter
    assert stats["responses_429"] <= 2 and counters["rate_limited"] <= 2, stats
