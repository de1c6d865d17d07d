"""The one scheduler behind every entry point: lookup batches, their groups, and a pipelined stream.

A batch is looked up with a few searches into one view; its requests are then grouped with
union-find over everything two of them could both touch (rules/touches.py: lookup keys, the records
those lead to, each contact's lead). A group runs in input order; groups run concurrently, up to
the engine's ``max_concurrency`` at a time. Up to ``depth`` batches are in flight: a batch searches
while earlier ones write, and each of its groups starts once no earlier group that claimed one of
its keys or records is still running, then takes that group's newer copies of those records.
Requests that share a key or record stay in input order across batches, so the end state and the
calls are those of applying the batches one after the other. ``upsert_batch`` is a stream of one batch, and a dry
run is the same stream over the dry write layer.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any

from closecrm.engine.lookups import Lookup, Terms
from closecrm.engine.op import Op, describe
from closecrm.engine.ordering.spans import combine, units
from closecrm.engine.rules import alias
from closecrm.engine.rules.decide import apply, no_identity
from closecrm.engine.rules.nest import MAX_NESTED_CONTACTS, Follower, Offer
from closecrm.engine.rules.touches import Touches, touches
from closecrm.engine.view import View
from closecrm.engine.writes.layer import Store
from closecrm.model import Outcome, UpsertRequest

log = logging.getLogger(__name__)

# Batches in flight at once, and the size of each batch's round of searches. A first sync is
# lead_write-bound at first (contacts wait for their lead); 5,000 requests of lookahead give the
# contact_write budget enough ready work (figures in bench/RESULTS.md).
STREAM_DEPTH = 25
STREAM_BATCH = 200
# Groups (requests that may touch the same lead, applied in order) running at once: the whole
# lookahead. Not what bounds the HTTP calls: the client's max_in_flight and the per-group pacers do.
# A group that waits for the lead_write pacer holds its slot, so any smaller bound idles the
# contact_write budget while a first sync creates leads.
MAX_CONCURRENCY = STREAM_DEPTH * STREAM_BATCH

Batches = Iterable[Sequence[UpsertRequest]] | AsyncIterable[Sequence[UpsertRequest]]
# (batch, request's index in it, its outcome): called on the loop as each request's outcome is final.
Settled = Callable[[int, int, Outcome], None]


@dataclass
class _Prepared:
    """A batch after its searches, before any decision: outcomes so far, the requests to apply, the view."""

    reqs: list[UpsertRequest]
    outcomes: list[Outcome | None]
    active: list[int]
    view: View
    positions: list[int] = field(default_factory=list)  # each request's place in the engine's input
    keys: dict[int, tuple[str, ...]] = field(default_factory=dict)  # active request -> its lookup keys
    lookup_calls: int = 0
    error: Exception | None = None


@dataclass
class _Running:
    """A batch whose groups are under way: their tasks, and what each claimed (key or id -> group)."""

    outcomes: list[Outcome | None]
    tasks: list[asyncio.Task[None]]
    claims: dict[str, int]
    view: View | None = None
    settled: bool = False  # outcomes were handed to a `Settled` as they ended: the batch yields its Nones

    def done(self) -> bool:
        return all(t.done() for t in self.tasks)

    async def result(self) -> list[Outcome]:
        if self.tasks:
            await asyncio.gather(*self.tasks)
        if self.settled:
            return list(self.outcomes)  # type: ignore[arg-type]  # None where settled, by position
        return [o for o in self.outcomes if o is not None]


@dataclass
class _Group:
    """Requests of one batch that may touch the same records, and what they wait for first."""

    members: list[int]
    keys: set[str]
    nodes: set[str]
    touches: list[Touches]  # what each member may touch, in member order
    deps: set[asyncio.Task[None]]  # earlier batches' groups that claimed one of these keys or records
    earlier: list[View | None]  # those batches' views, oldest first
    priority: tuple[int, int]  # (batch, group): an older batch's group gets a free slot first


class Scheduler:
    def __init__(self, lookup: Lookup, max_concurrency: int) -> None:
        self.lookup = lookup
        self.max_concurrency = max(1, max_concurrency)
        self._positions = count()  # across every stream of the engine, in the order batches are taken

    async def stream(
        self, batches: Batches, writes: Store, depth: int, settled: Settled | None = None
    ) -> AsyncIterator[list[Outcome]]:
        """Each batch's outcomes in order, batch after batch; ``depth`` 1 overlaps nothing.

        With ``settled``, each request's outcome goes to it as soon as it is final (its group ended,
        or it was refused before any group), and the batch forgets the request and its outcome: a
        batch of a whole input then holds only what is still under way. The batch's yield is then
        its list of outcomes by position, None for each one already settled."""
        source = _batches_of(batches)
        overlap = depth > 1
        gate = _OrderedGate(self.max_concurrency)  # shared: the stream as a whole keeps the bound
        in_flight: deque[_Running] = deque()
        launched = count()
        # The next batch from the source, read ahead. An async source (a writer feeding the stream as
        # its input arrives) may be slow to give one: meanwhile launched batches go on writing and
        # finished ones are yielded, so a feeder waiting for outcomes never waits on itself.
        fetch: asyncio.Future[Sequence[UpsertRequest] | None] | None = asyncio.ensure_future(anext(source, None))
        following: tuple[asyncio.Future[_Prepared], list[_Running]] | None = None
        head: asyncio.Future[list[Outcome]] | None = None
        try:
            while True:
                may_search = following is None and (overlap or not in_flight)
                if may_search and fetch is not None and fetch.done():
                    batch, fetch = fetch.result(), None
                    if batch is not None:
                        # The batches still writing when this search starts: what it may miss, so what to wait for.
                        running = [r for r in in_flight if not r.done()]
                        following = asyncio.ensure_future(self._prepare(list(batch), writes)), running
                        fetch = asyncio.ensure_future(anext(source, None))
                    batch = None  # the batch's requests are the prepared list's now (and go as they settle)
                if following is not None and len(in_flight) < max(1, depth):
                    prepared, running = following
                    following = None
                    in_flight.append(self._launch(await prepared, running, gate, next(launched), writes, settled))
                    continue
                if following is None and fetch is None and not in_flight:
                    return
                if in_flight and head is None:
                    head = asyncio.ensure_future(in_flight[0].result())
                awaited = [f for f in (head, fetch if may_search else None) if f is not None]
                await asyncio.wait(awaited, return_when=asyncio.FIRST_COMPLETED)
                if head is not None and head.done():
                    outs, head = head.result(), None
                    in_flight.popleft()
                    yield outs
        finally:
            futures = [f for f in (fetch, head) if f is not None]
            if following is not None:
                futures.append(following[0])
            for r in in_flight:
                futures.extend(r.tasks)
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    async def _prepare(self, reqs: list[UpsertRequest], writes: Store) -> _Prepared:
        """The part of a batch that only reads: which requests can be looked up, and the batched searches."""
        prep = _Prepared(reqs, [None] * len(reqs), [], writes.view())
        prep.positions = [next(self._positions) for _ in reqs]
        terms: list[Terms] = []
        for i, req in enumerate(reqs):
            if (refused := alias.unusable(req, writes.settings)) is not None:
                prep.outcomes[i] = refused
                continue
            try:
                found = self.lookup.terms(req)
            except Exception as exc:  # noqa: BLE001 - a value no lookup can use fails its own request only
                log.warning("request not looked up: %s", describe(exc))
                prep.outcomes[i] = Op(req).failed(exc)
                continue
            if found is None:
                prep.outcomes[i] = no_identity()
            else:
                prep.active.append(i)
                prep.keys[i] = found.keys
                terms.append(found)
        if prep.active:
            try:
                prep.lookup_calls = await self.lookup.search_into(prep.view, writes, terms)
            except Exception as exc:  # noqa: BLE001 - Close unavailable (or a bug): the batch fails with the reason
                prep.error = exc
        return prep

    def _launch(
        self,
        prep: _Prepared,
        running: list[_Running],
        gate: _OrderedGate,
        number: int,
        writes: Store,
        settled: Settled | None = None,
    ) -> _Running:
        """Start a batch's groups; each waits for the earlier groups it depends on."""
        reqs, outcomes, active, view = prep.reqs, prep.outcomes, prep.active, prep.view
        if prep.error is not None:
            for i in active:
                outcomes[i] = Op(reqs[i]).failed(prep.error)
        settle = None if settled is None else functools.partial(settled, number)
        if settle is not None:  # refused before any group (or the batch's searches failed)
            _settle(prep, settle, [i for i, o in enumerate(outcomes) if o is not None])
        if not active or prep.error is not None:
            return _Running(outcomes, [], {}, settled=settle is not None)
        keys = prep.keys
        touches_of = {i: touches(reqs[i], view, writes, keys[i]) for i in active}
        nodes_of = {i: set(t.nodes) for i, t in touches_of.items()}
        shares = {i: _share(prep.lookup_calls, len(active), n) for n, i in enumerate(active)}
        claims: dict[str, int] = {}
        tasks: list[asyncio.Task[None]] = []
        for g, group in enumerate(_groups(active, nodes_of, running)):
            nodes = set().union(*(nodes_of[i] for i in group))
            found = {c for n in nodes if (c := _claimant(running, n)) is not None}
            for node in nodes:
                claims[node] = g
            plan = _Group(
                members=group,
                keys={k for i in group for k in touches_of[i].keys},
                nodes=nodes,
                touches=[touches_of[i] for i in group],
                deps={running[b].tasks[g2] for b, g2 in found},
                earlier=[running[b].view for b in sorted({b for b, _ in found})],
                priority=(number, g),
            )
            tasks.append(
                asyncio.ensure_future(self._run_group(plan, prep, shares, gate, writes, settle))
            )
        return _Running(outcomes, tasks, claims, view, settled=settle is not None)

    async def _run_group(
        self,
        group: _Group,
        prep: _Prepared,
        shares: dict[int, int],
        gate: _OrderedGate,
        writes: Store,
        settle: Callable[[int, Outcome], None] | None = None,
    ) -> None:
        reqs, outcomes, view = prep.reqs, prep.outcomes, prep.view
        if group.deps:
            await asyncio.wait(group.deps)
        await gate.acquire(group.priority)
        try:
            try:
                for previous in group.earlier:  # oldest first: a later batch's copy is newer
                    if previous is not None:
                        _carry_over(view, previous, group.keys, group.nodes)
                # what earlier groups deleted or merged away after this batch searched
                writes.catch_up(view, group.nodes, group.keys)
                confirm_calls = await self.lookup.confirm_cached(view, writes, group.keys)
            except Exception as exc:  # noqa: BLE001 - Close unavailable, or a bug: this group fails, the stream goes on
                for i in group.members:
                    outcomes[i] = Op(reqs[i]).failed(exc, shares[i])
                if settle is not None:
                    _settle(prep, settle, group.members)
                return
            # Members in order; a collapsed one part by part where another member falls inside its span.
            results: dict[int, list[Outcome]] = {}
            seq = units(group.touches)
            made: dict[int, dict[str, Any]] = {}  # unit -> the contact a lost nested create made for it
            n = 0
            while n < len(seq):
                k, req = seq[n]
                i = group.members[k]
                calls = (0 if i in results else shares[i]) + (confirm_calls if n == 0 else 0)
                # The units after it, which a lead it creates may carry nested (rules/nest.py).
                offer = Offer(
                    lambda n=n: [
                        Follower(r, prep.positions[group.members[kk]])
                        for kk, r in seq[n + 1 : n + 1 + MAX_NESTED_CONTACTS]
                    ]
                )
                out = await apply(req, view, writes, calls, prep.positions[i], offer=offer, made=made.pop(n, None))
                results.setdefault(i, []).append(out)
                for j, taken in enumerate(offer.outcomes, n + 1):
                    m = group.members[seq[j][0]]
                    share = 0 if m in results else shares[m]
                    results.setdefault(m, []).append(replace(taken, calls=taken.calls + share) if share else taken)
                made.update({n + 1 + j: body for j, body in offer.made.items()})
                n += 1 + len(offer.outcomes)
            for i, outs in results.items():
                outcomes[i] = outs[0] if len(outs) == 1 else combine(outs)
            await writes.finished([(reqs[i], outcomes[i]) for i in results])  # recorded as they end
            if settle is not None:
                _settle(prep, settle, list(results))
        finally:
            gate.release()


def _settle(prep: _Prepared, settle: Callable[[int, Outcome], None], members: Iterable[int]) -> None:
    """Hands each member's final outcome to ``settle`` (the stream's `Settled`, its batch number bound), then forgets the member's request, outcome and
    lookup keys (nothing after its group reads them)."""
    for i in members:
        outcome = prep.outcomes[i]
        if outcome is None:
            continue
        prep.outcomes[i] = None
        prep.reqs[i] = None  # type: ignore[call-overload]
        prep.keys.pop(i, None)
        settle(i, outcome)


def _groups(active: list[int], nodes_of: dict[int, set[str]], running: list[_Running]) -> list[list[int]]:
    """Requests joined by union-find over what they may touch, and over the earlier group that claimed
    it (two requests waiting for the same earlier group wait together); each group in input order,
    the longest first, so a batch does not end waiting on one long group."""
    find, union = _union_find()
    for i in active:
        me = f"req:{i}"
        find(me)
        for node in nodes_of[i]:
            union(me, node)
            if (c := _claimant(running, node)) is not None:
                union(me, f"earlier:{c[0]}:{c[1]}")
    members: dict[str, list[int]] = {}
    for i in active:
        members.setdefault(find(f"req:{i}"), []).append(i)
    return sorted(members.values(), key=len, reverse=True)


def _claimant(running: list[_Running], node: str) -> tuple[int, int] | None:
    """The latest group of a running batch that claimed this key or record: (batch, group)."""
    for b in range(len(running) - 1, -1, -1):
        g = running[b].claims.get(node)
        if g is not None:
            return b, g
    return None


async def _batches_of(batches: Batches) -> AsyncIterator[Sequence[UpsertRequest]]:
    # Each batch let go once handed on: held here until the next one came, it would keep a whole
    # batch's requests that the stream lets go of as they settle.
    if isinstance(batches, AsyncIterable):
        async for batch in batches:
            yield batch
            del batch
    else:
        for batch in batches:
            yield batch
            del batch


def _union_find() -> tuple[Callable[[str], str], Callable[[str, str], None]]:
    """Disjoint sets over strings (path halving): the ``find`` and ``union`` of one grouping."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    return find, union


class _OrderedGate:
    """A semaphore whose waiters get in by priority (lowest first), then arrival.

    In a stream, a group of an older batch that had to wait for an earlier group goes before the
    groups of newer batches queued meanwhile: the oldest batch finishes first and the work that was
    waiting on a lead's creation is not starved by newer batches' creates.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._seq = count()

    async def acquire(self, priority: tuple[int, int]) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self._free += 1


def _carry_over(view: View, previous: View, keys: set[str], nodes: set[str]) -> None:
    """Give `view` the previous batch's copy of the records these keys and ids lead to.

    Called once the previous batch's groups that claimed them are done. This batch's searches may
    have run while they were still writing, so a hit (or the engine's remembered copy taken with
    it) can predate (or miss) a write; the previous batch's copy is the newest state. A copy goes in
    only over an older one, so never over a record this batch has itself written or read since;
    it is a safe base for a list merge when it was one there (read by id or written).
    """
    wanted = set(nodes)
    for key in keys:
        wanted |= previous.ids_for(key)
    for record_id in list(wanted):
        contact = previous.contacts.get(record_id)
        if contact is not None and contact.get("lead_id"):
            wanted.add(contact["lead_id"])
    for record_id in wanted:
        for theirs, ours, put in (
            (previous.leads, view.leads, view.put_lead),
            (previous.contacts, view.contacts, view.put_contact),
        ):
            record = theirs.get(record_id)
            if record is None:
                continue
            mine = ours.get(record_id)
            theirs_at = str(record.get("date_updated") or "")
            mine_at = str(mine.get("date_updated") or "") if mine is not None else ""
            if mine is None or mine_at < theirs_at or (mine_at == theirs_at and record_id not in view.fresh):
                view.drop(record_id)
                put(record, fresh=record_id in previous.fresh)
            break


def _share(total: int, n: int, position: int) -> int:
    """Split `total` shared calls over `n` requests as integers that add up to `total`."""
    if n <= 0:
        return 0
    return total // n + (1 if position < total % n else 0)
