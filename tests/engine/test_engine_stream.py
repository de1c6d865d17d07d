"""upsert_stream: batches pipelined (searches and writes of several batches overlapping) end exactly as
applying each request one at a time, with no duplicate leads, and with the calls of upsert_batch."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closecrm.engine import UpsertEngine
from closecrm.model import UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.engine.test_engine_property import leads_per_company, one_at_a_time_reference, requests, seeds

pytestmark = pytest.mark.integration


def chunks(reqs: list[UpsertRequest], sizes: list[int]) -> list[list[UpsertRequest]]:
    out, i = [], 0
    for n in sizes:
        if i >= len(reqs):
            break
        out.append(reqs[i : i + n])
        i += n
    if i < len(reqs):
        out.append(reqs[i:])
    return out


# A stream's input: some requests, cut into batches of these sizes (`chunks`).
stream_requests = st.lists(requests, min_size=1, max_size=10)
batch_sizes = st.lists(st.integers(1, 4), min_size=1, max_size=6)


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    leads=seeds,
    reqs=stream_requests,
    sizes=batch_sizes,
    depth=st.integers(2, 5),
    concurrency=st.sampled_from([1, 4, 16, 1024]),
)
def test_stream_equals_one_at_a_time_and_never_duplicates_a_company(
    close: CloseEnv,
    leads: list[Any],
    reqs: list[UpsertRequest],
    sizes: list[int],
    depth: int,
    concurrency: int,
) -> None:
    reference = one_at_a_time_reference(close, leads, reqs)
    batches = chunks(reqs, sizes)

    async def stream(engine: UpsertEngine) -> list[list[Any]]:
        return [outs async for outs in engine.upsert_stream(batches, depth=depth)]

    per_batch = close.run(stream, max_concurrency=concurrency)
    assert [len(o) for o in per_batch] == [len(b) for b in batches]
    reference.assert_matched_by(close, [o for outs in per_batch for o in outs])


def _workload(n: int) -> list[UpsertRequest]:
    """A first sync where later batches hold more people of the companies earlier batches create."""
    out = []
    for i in range(n):
        c = (i * 7) % (n // 3)
        out.append(
            UpsertRequest(
                lead_company_id=f"co{c}",
                lead_name=f"Company {c}",
                contact_user_id=f"u{i % (n - 5)}",  # a few repeats: updates of contacts just created
                contact_emails=(f"p{i % (n - 5)}@co{c}.example.com",),
                contact_title="CEO" if i % 2 else "CTO",
            )
        )
    return out


def batch_after_batch(close: CloseEnv, batches: list[list[UpsertRequest]]) -> tuple[list[Any], Any, int]:
    """``upsert_batch`` on each batch in turn on a fresh org: the outcomes, the end state and the calls."""

    async def one_by_one(engine: UpsertEngine) -> list[Any]:
        return [o for b in batches for o in await engine.upsert_batch(b)]

    close.fresh_org()
    outs = close.run(one_by_one, max_concurrency=8)
    return outs, close.projection(), close.sim.stats()["requests_total"]


def test_stream_makes_the_same_calls_and_state_as_batch_after_batch(close: CloseEnv) -> None:
    reqs = _workload(60)
    batches = [reqs[i : i + 8] for i in range(0, len(reqs), 8)]
    batch_outs, expected, batch_calls = batch_after_batch(close, batches)

    async def stream(engine: UpsertEngine) -> list[Any]:
        return [o async for outs in engine.upsert_stream(batches, depth=4) for o in outs]

    close.fresh_org()
    stream_outs = close.run(stream, max_concurrency=8)
    assert close.projection() == expected
    assert [o.kind for o in stream_outs] == [o.kind for o in batch_outs]
    assert close.sim.stats()["requests_total"] == batch_calls
    assert sum(o.calls for o in stream_outs) == batch_calls
    assert len(close.leads()) == 20


def test_upsert_many_is_the_stream_of_its_slices_at_the_engine_defaults(close: CloseEnv) -> None:
    """What the pipeline's writer calls: one outcome per request in order, the calls and state of
    upsert_batch on each slice in turn, with the default (large) group concurrency."""
    reqs = _workload(60)

    async def slices(engine: UpsertEngine) -> list[Any]:
        return [o for i in range(0, len(reqs), 8) for o in await engine.upsert_batch(reqs[i : i + 8])]

    close.fresh_org()
    batch_outs = close.run(slices)
    expected, batch_calls = close.projection(), close.sim.stats()["requests_total"]

    async def many(engine: UpsertEngine) -> list[Any]:
        return await engine.upsert_many(reqs, batch_size=8)

    close.fresh_org()
    many_outs = close.run(many)
    assert len(many_outs) == len(reqs)
    assert [o.kind for o in many_outs] == [o.kind for o in batch_outs]
    assert close.projection() == expected
    assert close.sim.stats()["requests_total"] == batch_calls
    assert len(close.leads()) == 20


def test_stream_with_search_lag_ends_as_one_at_a_time(close: CloseEnv) -> None:
    """Search lags 0.5 s behind writes: later batches' searches miss what earlier ones created."""
    reqs = _workload(45)
    close.fresh_org()
    close.one(*reqs)
    expected = close.projection()

    close.fresh_org()
    close.sim.configure(search_lag=0.5)
    batches = [reqs[i : i + 5] for i in range(0, len(reqs), 5)]

    async def stream(engine: UpsertEngine) -> list[Any]:
        return [o async for outs in engine.upsert_stream(batches, depth=3) for o in outs]

    outs = close.run(stream, max_concurrency=4)
    assert not [o for o in outs if o.kind == "failed"]
    assert close.projection() == expected
    assert sorted(leads_per_company(close).values()) == [1] * 15


def test_an_empty_stream_and_a_dry_run_stream(close: CloseEnv) -> None:
    async def empty(engine: UpsertEngine) -> list[Any]:
        return [outs async for outs in engine.upsert_stream([])]

    assert close.run(empty) == []

    async def dry(engine: UpsertEngine) -> list[Any]:
        return [
            outs async for outs in engine.upsert_stream([[UpsertRequest(lead_company_id="x")]], dry_run=True)
        ]

    [[out]] = close.run(dry)
    assert out.kind == "created" and close.leads() == []


def test_an_async_source_that_waits_for_outcomes_gets_them(close: CloseEnv) -> None:
    """A writer feeds the stream as input arrives and may wait for outcomes before feeding more: the
    stream must yield what is done while its source has nothing to give, and end as batch after batch."""
    reqs = _workload(60)
    batches = [reqs[i : i + 8] for i in range(0, len(reqs), 8)]
    batch_outs, expected, batch_calls = batch_after_batch(close, batches)

    async def fed(engine: UpsertEngine) -> list[Any]:
        received = asyncio.Event()

        async def source():  # noqa: ANN202
            for i, b in enumerate(batches):
                if i % 3 == 2:  # every third batch only once an outcome came back since the last one
                    await received.wait()
                    received.clear()
                yield b

        out = []
        async for outs in engine.upsert_stream(source(), depth=4):
            out.extend(outs)
            received.set()
        return out

    close.fresh_org()
    fed_outs = close.run(fed, max_concurrency=8)
    assert [o.kind for o in fed_outs] == [o.kind for o in batch_outs]
    assert close.projection() == expected
    assert close.sim.stats()["requests_total"] == batch_calls


def _append_in_a_later_batch(close: CloseEnv, meanwhile) -> dict[str, Any]:
    """u1 is created in one batch and gets a second email in the next; ``meanwhile`` runs between them."""

    async def go(engine: UpsertEngine) -> None:
        await engine.upsert_batch([UpsertRequest(contact_user_id="u1", contact_emails=("one@x.com",))])
        await meanwhile(engine.client)
        await engine.upsert_batch([UpsertRequest(contact_user_id="u1", contact_emails=("two@x.com",))])

    close.run(go)
    [contact] = close.sim.contacts()
    return contact


def test_appending_to_a_contact_an_earlier_batch_created_makes_no_read(close: CloseEnv) -> None:
    async def nothing(client) -> None:
        pass

    contact = _append_in_a_later_batch(close, nothing)
    assert [e["email"] for e in contact["emails"]] == ["one@x.com", "two@x.com"]
    assert "read" not in close.sim.stats()["by_group"]


def test_a_contact_changed_by_someone_else_since_is_read_before_its_lists_are_merged(close: CloseEnv) -> None:
    async def someone_adds_a_phone(client) -> None:
        [contact] = close.sim.contacts()
        await client.request("PUT", f"contact/{contact['id']}/", json={"phones": [{"phone": "+14155550100"}]})

    contact = _append_in_a_later_batch(close, someone_adds_a_phone)
    assert [e["email"] for e in contact["emails"]] == ["one@x.com", "two@x.com"]
    assert [p["phone"] for p in contact["phones"]] == ["+14155550100"]
    assert close.sim.stats()["by_group"]["read"] == 1


def _settling(batches: list[list[UpsertRequest]], depth: int):  # noqa: ANN202
    """A stream run with ``settled``: the outcomes it handed over by (batch, index), and what it yielded."""

    async def go(engine: UpsertEngine) -> tuple[dict[tuple[int, int], Any], list[list[Any]]]:
        handed: dict[tuple[int, int], Any] = {}

        def settled(number: int, index: int, outcome: Any) -> None:
            assert (number, index) not in handed, "settled twice"
            handed[(number, index)] = outcome

        yielded = [outs async for outs in engine.upsert_stream(batches, depth=depth, settled=settled)]
        return handed, yielded

    return go


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    leads=seeds,
    reqs=stream_requests,
    sizes=batch_sizes,
    depth=st.integers(1, 4),
)
def test_a_settling_stream_hands_every_outcome_over_once_and_ends_as_one_at_a_time(
    close: CloseEnv, leads: list[Any], reqs: list[UpsertRequest], sizes: list[int], depth: int
) -> None:
    reference = one_at_a_time_reference(close, leads, reqs)
    batches = chunks(reqs, sizes)
    handed, yielded = close.run(_settling(batches, depth), max_concurrency=4)
    assert sorted(handed) == [(b, i) for b, batch in enumerate(batches) for i in range(len(batch))]
    assert yielded == [[None] * len(b) for b in batches]  # nothing left to yield: all were handed over
    reference.assert_matched_by(close, [handed[(b, i)] for b, batch in enumerate(batches) for i in range(len(batch))])


def test_a_settling_stream_makes_the_calls_and_state_of_batch_after_batch(close: CloseEnv) -> None:
    reqs = _workload(60)
    batches = [reqs[i : i + 8] for i in range(0, len(reqs), 8)]
    batch_outs, expected, batch_calls = batch_after_batch(close, batches)
    close.fresh_org()
    handed, _ = close.run(_settling(batches, 4), max_concurrency=8)
    assert [handed[(b, i)].kind for b, batch in enumerate(batches) for i in range(len(batch))] == [
        o.kind for o in batch_outs
    ]
    assert close.projection() == expected
    assert close.sim.stats()["requests_total"] == batch_calls


def test_a_settled_request_is_let_go_while_its_batch_is_still_writing(close: CloseEnv) -> None:
    """One batch of a whole input: once a request's group ended, nothing in the engine keeps it, though
    the batch (other groups) is still under way."""
    batch = [*_workload(30), UpsertRequest(lead_company_id="slow", lead_name="Slow", contact_user_id="slow-1")]
    refs = {i: weakref.ref(r) for i, r in enumerate(batch[:30])}
    source = _once(batch)  # the test keeps weak references only
    del batch

    async def go(engine: UpsertEngine) -> list[int]:
        seen: list[int] = []
        alive_after: list[int] = []
        release = asyncio.Event()
        original = engine._scheduler._run_group  # noqa: SLF001 - hold one group back until the check

        async def held(group, prep, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            if any(prep.reqs[i] is not None and prep.reqs[i].lead_company_id == "slow" for i in group.members):
                await release.wait()
            await original(group, prep, *args, **kw)

        engine._scheduler._run_group = held  # noqa: SLF001

        def settled(number: int, index: int, outcome: Any) -> None:
            seen.append(index)
            if len(seen) == 30:  # every request but the held one: check, then let it go on
                asyncio.get_running_loop().call_soon(check)

        def check() -> None:
            gc.collect()
            alive_after.extend(i for i, ref in refs.items() if ref() is not None)
            release.set()

        stream = engine.upsert_stream(source, settled=settled)
        outs = [o async for o in stream]
        assert outs == [[None] * 31]
        return alive_after

    assert close.run(go, max_concurrency=8) == []


def _once(batch: list[UpsertRequest]):  # noqa: ANN202
    """A source of one batch that keeps no reference to it once handed on."""
    box = [batch]

    async def gen():  # noqa: ANN202
        yield box.pop()

    return gen()
