"""EngineFeed: outcomes come back paired (as the engine settles them, else in order); an engine crash fails what
was outstanding, not the writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from closecrm.model import Outcome, UpsertRequest
from transforms.feed import EngineFeed


class _Item:
    def __init__(self, n: int) -> None:
        self.n = n
        self.request = UpsertRequest(contact_user_id=str(n))


class _CountingEngine:
    """Stands in for UpsertEngine.upsert_stream's contract only: one list of outcomes per batch, in order;
    it raises on a request whose user id is "boom" (what a crashing engine does to a stream)."""

    async def upsert_stream(
        self, batches: AsyncIterator[list[UpsertRequest]], *, dry_run: bool = False, settled: object = None
    ) -> AsyncIterator[list[Outcome]]:
        async for batch in batches:
            await asyncio.sleep(0.001)
            if any(r.contact_user_id == "boom" for r in batch):
                raise RuntimeError("engine crashed")
            yield [Outcome(kind="created", reason=r.contact_user_id) for r in batch]


def test_outcomes_come_back_paired_in_order_across_submits(loop: asyncio.AbstractEventLoop) -> None:
    feed = EngineFeed(loop, _CountingEngine(), batch_size=3)  # type: ignore[arg-type]
    items = [_Item(i) for i in range(20)]
    feed.submit(items[:11])
    feed.submit(items[11:])
    assert feed.outstanding == 20
    pairs = list(feed.wait_until(0))
    assert [i.n for i, _ in pairs] == list(range(20))
    assert all(o.reason == str(i.n) for i, o in pairs)
    assert feed.outstanding == 0 and list(feed.ready()) == []
    feed.close()


def test_an_engine_crash_fails_what_was_outstanding_and_the_next_submit_starts_afresh(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed = EngineFeed(loop, _CountingEngine(), batch_size=2)  # type: ignore[arg-type]
    items = [_Item(i) for i in range(6)]
    items[2].request = UpsertRequest(contact_user_id="boom")
    feed.submit(items)
    pairs = list(feed.wait_until(0))
    assert [i.n for i, _ in pairs] == list(range(6))
    assert [o.kind for _, o in pairs] == ["created", "created"] + ["failed"] * 4
    assert pairs[2][1].reason == "engine_error:RuntimeError"
    feed.submit([_Item(7)])
    [(item, outcome)] = list(feed.wait_until(0))
    assert item.n == 7 and outcome.kind == "created"
    feed.close()


class _SettlingEngine:
    """Stands in for a settling upsert_stream: hands each batch's outcomes to ``settled`` one by one, last
    request first, then yields None in their places. A request whose user id is "lost" it never settles
    (an engine that forgets one)."""

    async def upsert_stream(
        self, batches: AsyncIterator[list[UpsertRequest]], *, dry_run: bool = False, settled=None  # noqa: ANN001
    ) -> AsyncIterator[list[Outcome | None]]:
        number = 0
        async for batch in batches:
            for i in reversed(range(len(batch))):
                await asyncio.sleep(0)
                if batch[i].contact_user_id != "lost":
                    settled(number, i, Outcome(kind="created", reason=batch[i].contact_user_id))
            yield [None] * len(batch)
            number += 1


def test_settled_outcomes_come_back_paired_as_they_end_and_one_never_settled_fails(
    loop: asyncio.AbstractEventLoop,
) -> None:
    feed = EngineFeed(loop, _SettlingEngine(), batch_size=3)  # type: ignore[arg-type]
    items = [_Item(i) for i in range(7)]
    items[4].request = UpsertRequest(contact_user_id="lost")
    feed.submit(items)
    pairs = list(feed.wait_until(0))
    assert [i.n for i, _ in pairs[:3]] == [2, 1, 0]  # as they settled, not as submitted
    assert sorted(i.n for i, _ in pairs) == list(range(7))
    by_n = {i.n: o for i, o in pairs}
    assert all(by_n[n].reason == str(n) for n in range(7) if n != 4)
    assert by_n[4].kind == "failed" and by_n[4].reason == "engine_error:RuntimeError"
    assert feed.outstanding == 0 and list(feed.ready()) == []
    feed.close()
