"""The write layer under the decision procedure: reads by id, PUT updates, POST creates, and what
the engine remembers of them. ``Writes`` talks to Close; ``DryWrites`` (dry.py) only pretends to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine.op import Op
from closecrm.engine.view import View
from closecrm.engine.writes import ambiguity
from closecrm.engine.writes.cache import LRU, IdCache
from closecrm.engine.writes.ledger import CreatedIdLedger
from closecrm.journal import JournalError, Recording, RecordingStopped
from closecrm.model import Outcome, Settings, UpsertRequest

Record = dict[str, Any]
BORN_SIZE = 100_000  # records whose creation order this engine remembers
# Records, durably, a merge or deletion about to be sent: the request, and its change as the outcome lists it.
Intend = Callable[[UpsertRequest, Record], None]
# Records, durably, the outcomes of requests that just ended (a group's, in order).
Ended = Callable[[list[tuple[UpsertRequest, Outcome]]], None]


class Records(Protocol):
    """id -> the newest copy of a record the engine read by id or got back from a write."""

    def get(self, record_id: str) -> Record | None: ...

    def put(self, record: Record) -> None: ...

    def forget(self, record_id: str) -> None: ...


class Doubts(Protocol):
    """What the job took away lately (the created-id ledger): a search hit it concerns may be stale."""

    def left_lately(self, key: str, record_id: str) -> bool: ...

    def removed_lately(self, record_id: str) -> bool: ...


class Store:
    """Reads by id, and the memory (lookup key -> ids, id -> record) every read and write feeds.

    The memory is what lets a later request find a record search does not show yet; the lookup
    confirms what it holds with a read by id before anything is decided on it.
    """

    def __init__(self, client: CloseClient, settings: Settings, ids: IdCache, records: Records) -> None:
        self.client = client
        self.settings = settings
        self.ids = ids
        self.records = records
        # id -> input position of the request that created it (see Op.position); a view ranks
        # these after every record it did not create, in this order.
        self.born: LRU[str, int] = LRU(BORN_SIZE)
        # ids this engine deleted or merged away (a merged lead -> the lead it went into, else ""):
        # search, and a batch that searched before the removal, may show them for a while yet
        self.gone: LRU[str, str] = LRU(BORN_SIZE)
        # what other engines (an earlier run, another writer) took away lately, when a ledger is kept
        self.doubts: Doubts | None = None

    ended: Ended | None = None  # see UpsertEngine.record

    async def finished(self, done: list[tuple[UpsertRequest, Outcome]]) -> None:
        """These requests ended: their records on disk (``ended``) before their group lets the next go."""
        if self.ended is None or not done:
            return
        try:
            await asyncio.to_thread(self.ended, done)
        except JournalError:
            pass  # the run's Recording holds it: no write leaves from now on, and the writer stops the job

    def view(self) -> View:
        """An empty view whose "oldest" ranks this engine's creations in input order."""
        return View(self.settings, born=self.born)

    def created(self, op: Op, record: Record) -> None:
        """``op`` created this record (a lead's nested contacts included)."""
        self.born.put(record["id"], op.position)
        for contact in record.get("contacts") or []:
            self.born.put(contact["id"], op.position)

    async def call(self, op: Op, method: str, path: str, body: Any = None) -> Any:
        op.calls += 1
        return await self.client.request(method, path, json=body)

    async def read(self, op: Op, view: View, record_id: str) -> Record:
        """A lead (with its contacts) or a contact by id, into the view and the memory."""
        record = await self._get(op, record_id)
        if record_id.startswith("lead_"):
            self.put_lead(view, record)
        else:
            self.put_contact(view, record)
        return record

    async def _get(self, op: Op, record_id: str) -> Record:
        kind = "lead" if record_id.startswith("lead_") else "contact"
        return await self.call(op, "GET", f"{kind}/{record_id}/")

    async def lead(self, op: Op, view: View, lead_id: str, *, fresh: bool = False) -> Record | None:
        """A matched contact's lead: from the view when it holds it (``fresh``: only a copy read by id or
        written), else by id; None when it is gone."""
        lead = view.leads.get(lead_id)
        if lead is not None and (not fresh or lead_id in view.fresh):
            return lead
        try:
            await self.read(op, view, lead_id)
        except CloseAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return view.leads.get(lead_id)

    async def confirm(self, op: Op, view: View, record_id: str) -> Record | None:
        """The record as a read by id says now, into the view; None (and out of the view) when it is gone."""
        try:
            return await self.read(op, view, record_id)
        except CloseAPIError as exc:
            if exc.status == 404:
                self.removed(view, record_id)
                return None
            raise

    def doubtful(self, view: View, key: str, record_id: str) -> bool:
        """Is the view's copy of this record, found by ``key``, one search may show as it was before the
        job took the key off it, deleted it or merged its lead away? A copy read by id is not."""
        if self.doubts is None or not self.doubts.took_anything() or record_id in view.fresh:
            return False
        if self.doubts.left_lately(key, record_id) or self.doubts.removed_lately(record_id):
            return True
        lead_id = (view.contacts.get(record_id) or {}).get("lead_id")
        return bool(lead_id) and self.doubts.removed_lately(lead_id)

    def put_lead(self, view: View, lead: Record) -> list[tuple[str, ...]]:
        """Returns the lookup keys of each of the lead's nested contacts, in order."""
        view.put_lead(lead, fresh=True)
        self.records.put({k: v for k, v in lead.items() if k != "contacts"})
        self.ids.add_all(view.lead_keys(lead), lead["id"])
        keys_of = []
        for contact in lead.get("contacts") or []:
            self.records.put(contact)
            keys = view.contact_keys(contact)
            self.ids.add_all(keys, contact["id"])
            keys_of.append(keys)
        return keys_of

    def put_contact(self, view: View, contact: Record) -> None:
        view.put_contact(contact, fresh=True)
        self.records.put(contact)
        self.ids.add_all(view.contact_keys(contact), contact["id"])

    def learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None:
        """A write gave this record these lookup keys (nothing outside this engine hears of it here)."""

    # The writes: each puts what it wrote into the view and the memory.

    async def update_lead(self, op: Op, view: View, lead: Record, body: Record) -> None:
        raise NotImplementedError

    async def update_contact(self, op: Op, view: View, contact: Record, body: Record) -> None:
        raise NotImplementedError

    async def create_lead(self, op: Op, view: View, body: Record) -> Record:
        """The new lead, with its nested contacts."""
        raise NotImplementedError

    async def create_contact(self, op: Op, view: View, body: Record) -> Record:
        """The new contact; ``body`` names its lead."""
        raise NotImplementedError

    async def delete_contact(self, op: Op, view: View, contact: Record) -> None:
        raise NotImplementedError

    async def merge_leads(self, op: Op, view: View, source: str, into: str) -> None:
        """Lead ``source`` merged into ``into``: its contacts move there and it is deleted."""
        raise NotImplementedError

    def removed(self, view: View, record_id: str) -> None:
        """A record this engine deleted or merged away: out of the view and the memory, for good."""
        record = view.contacts.get(record_id) or view.leads.get(record_id) or self.records.get(record_id) or {}
        keys = view.contact_keys(record) if "lead_id" in record else view.lead_keys(record)
        view.drop(record_id)
        self.records.forget(record_id)
        self.ids.forget(record_id, keys)
        if record_id not in self.gone:
            self.gone.put(record_id, "")

    def catch_up(self, view: View, nodes: Iterable[str], keys: Iterable[str]) -> None:
        """Out of ``view``, the records (of these nodes, or found by these keys) this engine removed
        since the view's searches; the contacts it shows under a merged-away lead, under the lead
        they went into."""
        if not len(self.gone):
            return  # nothing removed yet (a run without aliases): no view to mend
        for record_id in set(nodes).union(*(view.ids_for(k) for k in keys)):
            if record_id in self.gone:
                view.drop(record_id)
                continue
            contact = view.contacts.get(record_id)
            into = self.gone.get(contact["lead_id"]) if contact and contact.get("lead_id") else None
            if into:
                view.contacts[record_id] = {**contact, "lead_id": into}

    def moved(self, view: View, source: str, into: str) -> None:
        """The contacts the view and the memory hold under lead ``source`` are under ``into`` now."""
        for contact_id, contact in list(view.contacts.items()):
            if contact.get("lead_id") == source:
                view.contacts[contact_id] = moved = {**contact, "lead_id": into}
                if self.records.get(contact_id) is not None:
                    self.records.put(moved)
        self.gone.put(source, into)
        self.removed(view, source)


class Writes(Store):
    """Close's writes. The created-id ledger (optional) hears of the lookup keys each write gives a
    record, for other engines (a re-run, a restart) whose searches may not show them for a while."""

    def __init__(
        self,
        client: CloseClient,
        settings: Settings,
        ids: IdCache,
        records: Records,
        *,
        lookup: ambiguity.Finder,
        ledger: CreatedIdLedger | None,
        settle_seconds: float,
        unsettled_seconds: float,
    ) -> None:
        super().__init__(client, settings, ids, records)
        self.lookup = lookup
        self.ledger = ledger
        self.settle_seconds = settle_seconds
        self.unsettled = ambiguity.Unsettled(unsettled_seconds)
        self.doubts = ledger
        self.intend: Intend | None = None
        self.recording: Recording | None = None

    async def call(self, op: Op, method: str, path: str, body: Any = None) -> Any:
        # A run that cannot record stops: no write (nor the reads that lead to one) leaves once an
        # append of its failed, so the requests under way end at once and the writer ends the job.
        failure = self.recording.failure if self.recording is not None else None
        if failure is not None:
            raise RecordingStopped(str(failure))
        return await super().call(op, method, path, body)

    async def _intent(self, op: Op, obj: str, record_id: str, action: str) -> None:
        """The audit record of a merge or deletion, on disk before it is sent (see UpsertEngine.record)."""
        if self.intend is None:
            return
        change = next(
            (c for c in reversed(op.changes) if (c.get("object"), c.get("id"), c.get("action")) == (obj, record_id, action)),
            {"object": obj, "id": record_id, "action": action},
        )
        try:
            await asyncio.to_thread(self.intend, op.req, change)
        except JournalError as exc:
            raise RecordingStopped(str(exc)) from None

    def learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None:
        if self.ledger is None:
            return
        keys, had = list(keys), list(before)
        new = [k for k in keys if k not in had]
        if new:
            self.ledger.record(kind, record_id, new)
        left = [k for k in had if k not in keys]
        if left:  # e.g. an alias re-key: other engines' searches still show the record under these
            self.ledger.left(kind, record_id, left)

    async def update_lead(self, op: Op, view: View, lead: Record, body: Record) -> None:
        updated = await self.call(op, "PUT", f"lead/{lead['id']}/", body)
        self.put_lead(view, updated)
        self.learned("lead", updated["id"], view.lead_keys(updated), before=view.lead_keys(lead))

    async def update_contact(self, op: Op, view: View, contact: Record, body: Record) -> None:
        updated = await self.call(op, "PUT", f"contact/{contact['id']}/", body)
        self.put_contact(view, updated)
        self.learned("contact", updated["id"], view.contact_keys(updated), before=view.contact_keys(contact))

    async def create_lead(self, op: Op, view: View, body: Record) -> Record:
        """The new lead, with its nested contacts; may raise ``ambiguity.Redo``."""
        lead = await ambiguity.post_lead(self, op, view, body)
        self.created(op, lead)
        keys_of = self.put_lead(view, lead)
        self.learned("lead", lead["id"], view.lead_keys(lead))
        for contact, keys in zip(lead.get("contacts") or [], keys_of, strict=True):
            self.learned("contact", contact["id"], keys)
        return lead

    async def create_contact(self, op: Op, view: View, body: Record) -> Record:
        """The new contact (``body`` names its lead); may raise ``ambiguity.Redo``."""
        contact = await ambiguity.post_contact(self, op, view, body)
        self.created(op, contact)
        self.put_contact(view, contact)
        self.learned("contact", contact["id"], view.contact_keys(contact))
        return contact

    async def delete_contact(self, op: Op, view: View, contact: Record) -> None:
        path = f"contact/{contact['id']}/"
        if self.ledger is not None:  # before: a run killed after the DELETE still leaves the word
            self.ledger.removed("contact", contact["id"], view.contact_keys(contact))
        await self._intent(op, "contact", contact["id"], "delete")
        await ambiguity.remove(self, op, "DELETE", path, None, gone=path)
        self.removed(view, contact["id"])

    async def merge_leads(self, op: Op, view: View, source: str, into: str) -> None:
        # Close may finish a merge later: what it moves is known, so the view moves it now.
        body = {"source": source, "destination": into}
        if self.ledger is not None:  # before, as for a deletion: a hit of it is then read by id
            lead = view.leads.get(source) or self.records.get(source) or {}
            self.ledger.removed("lead", source, view.lead_keys(lead))
        await self._intent(op, "lead", source, "merge")
        merge = (source, into)
        await ambiguity.remove(self, op, "POST", "lead/merge/", body, gone=f"lead/{source}/", merge=merge)
        self.moved(view, source, into)
