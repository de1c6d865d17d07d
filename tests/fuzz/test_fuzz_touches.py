"""Property: the rules write only what `touches` says a request may write.

The ordering (closecrm/engine/ordering) groups requests and lets members commute on what
`closecrm.engine.rules.touches` says each reads and writes. Here the rules run for real, through
the engine's scheduler and write layer against the simulator, over test_fuzz_alias.py's seeded
organisations and bursts (identify, group and alias events, collapsed per person): just before each
request (or part) is decided, `touches` is taken against the very view it is decided on, and every
write the write layer then makes for it must be one it named: each existing record updated, deleted,
merged or given a new contact is in `writes`, and each lookup key a write gives a record or takes
from one (what the layer `learned`) is in `writes_keys`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closecrm.api.client import CloseClient
from closecrm.engine.lookups import Lookup
from closecrm.engine.op import Op
from closecrm.engine.ordering import scheduler
from closecrm.engine.ordering.spans import batches
from closecrm.engine.rules.touches import Touches, touches
from closecrm.engine.view import View
from closecrm.engine.writes.cache import IdCache, RecordCache
from closecrm.engine.writes.layer import Store, Writes
from closecrm.model import Flags, Outcome, UpsertRequest
from tests.engine.conftest import CloseEnv
from tests.fuzz.budget import budget
from tests.fuzz.test_fuzz_alias import alias_flags, scenarios
from tests.fuzz.test_fuzz_equivalence import bounded, burst, flags, note, seed_dense
from transforms.writer import flush_order

pytestmark = pytest.mark.integration

Record = dict[str, Any]


@dataclass
class Decided:
    """One request (or part) as decided: what `touches` said beforehand, and what was written."""

    touches: Touches
    records: list[tuple[str, str]] = field(default_factory=list)  # (what, existing record id)
    created: set[str] = field(default_factory=set)
    keys: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)  # (kind, record id, keys)
    outcome: Outcome | None = None
    # The requests whose contacts its new lead carried nested (rules/nest.py), as they would have
    # been decided right after it: that create makes their writes too.
    nested: list[Touches] = field(default_factory=list)

    def unpredicted(self) -> list[str]:
        t = self.touches
        writes = t.writes.union(*(n.writes for n in self.nested))
        keys = t.writes_keys.union(*(n.writes_keys for n in self.nested))
        out = [f"{what} {rid}" for what, rid in self.records if rid not in writes and rid not in self.created]
        out += [f"{kind} {rid} keys {sorted(k - keys)}" for kind, rid, k in self.keys if k - keys]
        return out


_deciding: ContextVar[Decided | None] = ContextVar("deciding", default=None)


class RecordingWrites(Writes):
    """Close's write layer, noting each write against the request being decided (in its own task)."""

    def _wrote(self, what: str, *record_ids: str) -> None:
        if (d := _deciding.get()) is not None:
            d.records.extend((what, rid) for rid in record_ids)

    def learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None:
        keys, before = list(keys), list(before)
        if (d := _deciding.get()) is not None:
            d.keys.append((kind, record_id, frozenset(keys).symmetric_difference(before)))
        super().learned(kind, record_id, keys, before)

    async def update_lead(self, op: Op, view: View, lead: Record, body: Record) -> None:
        self._wrote("update lead", lead["id"])
        await super().update_lead(op, view, lead, body)

    async def update_contact(self, op: Op, view: View, contact: Record, body: Record) -> None:
        self._wrote("update contact", contact["id"])
        await super().update_contact(op, view, contact, body)

    async def create_lead(self, op: Op, view: View, body: Record) -> Record:
        lead = await super().create_lead(op, view, body)
        if (d := _deciding.get()) is not None:
            d.created.update([lead["id"], *(c["id"] for c in lead.get("contacts") or [])])
        return lead

    async def create_contact(self, op: Op, view: View, body: Record) -> Record:
        self._wrote("new contact under", body["lead_id"])
        contact = await super().create_contact(op, view, body)
        if (d := _deciding.get()) is not None:
            d.created.add(contact["id"])
        return contact

    async def delete_contact(self, op: Op, view: View, contact: Record) -> None:
        self._wrote("delete contact", contact["id"])
        await super().delete_contact(op, view, contact)

    async def merge_leads(self, op: Op, view: View, source: str, into: str) -> None:
        self._wrote("merge lead", source, into)
        await super().merge_leads(op, view, source, into)


@contextmanager
def watching(decided: list[Decided]) -> Iterator[None]:
    """The scheduler's `apply`, taking `touches` on the view just before each decision."""
    real = scheduler.apply

    async def apply(req: UpsertRequest, view: View, writes: Store, *args: Any, **kwargs: Any) -> Outcome:
        d = Decided(touches(req, view, writes))
        token = _deciding.set(d)
        try:
            d.outcome = await real(req, view, writes, *args, **kwargs)
        finally:
            _deciding.reset(token)
        offer = kwargs.get("offer")
        if offer is not None:
            d.nested = [touches(f.req, view, writes) for f in offer.followers[: len(offer.outcomes)]]
        decided.append(d)
        return d.outcome

    scheduler.apply = apply  # type: ignore[assignment]
    try:
        yield
    finally:
        scheduler.apply = real


def run(env: CloseEnv, reqs: list[UpsertRequest], sizes: list[int], depth: int) -> list[Decided]:
    """The engine's stack (lookup, write layer, scheduler) over ``reqs`` in batches of ``sizes``."""
    decided: list[Decided] = []

    async def go() -> None:
        async with CloseClient(env.sim.base_url, env.sim.api_key) as client:
            lookup = Lookup(client, env.settings)
            ids, records = IdCache(100_000), RecordCache(20_000)
            writes = RecordingWrites(
                client,
                env.settings,
                ids,
                records,
                lookup=lookup,
                ledger=None,
                settle_seconds=3.0,
                unsettled_seconds=120.0,
            )
            stream = scheduler.Scheduler(lookup, scheduler.MAX_CONCURRENCY).stream(
                batches(reqs, sizes, lambda r: r), writes, depth
            )
            async for _ in stream:
                pass

    with watching(decided):
        asyncio.run(go())
    return decided


@budget(250)
@given(
    scenario=scenarios(),
    identify_flags=flags,
    group_flags=flags,
    merge_flags=alias_flags,
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    depth=st.sampled_from([1, 2, 25]),
)
def test_every_write_of_the_rules_is_one_touches_predicted(
    close: CloseEnv,
    scenario: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    identify_flags: Flags,
    group_flags: Flags,
    merge_flags: Flags,
    batch_sizes: list[int],
    depth: int,
) -> None:
    leads, raws = scenario
    close.fresh_org()
    seed_dense(close, leads)
    b = burst(raws, identify_flags, group_flags, merge_flags)
    reqs = [p.request for p in flush_order([s.pending for s in bounded(b)])]
    decided = run(close, reqs, batch_sizes, depth)
    assert decided, "nothing was decided"
    for d in decided:
        if d.records or d.created:
            note(f"wrote ({d.outcome.branch if d.outcome else None})")
        branch = d.outcome.branch if d.outcome else None
        assert not d.unpredicted(), f"{branch}: not in touches: {d.unpredicted()}; {d.touches.request}"
