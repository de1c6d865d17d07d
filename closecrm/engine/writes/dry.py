"""The dry run's write layer: writes nothing, and remembers what it would have written.

A dry run must plan what the real run would write, so later requests of the same run have to find
what earlier ones "created" or "updated", as they would find the real records. Search never shows
them, so this layer answers for them: a created record gets an id like ``lead_dry_3`` and joins the
memory (lookup key -> id, id -> record) that the lookup consults; a read by id of a record this run
wrote returns the written copy, and a read of a real lead shows the contacts this run added to it.
What it wrote stays for the engine's lifetime: a dry run holds its whole plan in memory.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from itertools import count
from typing import Any

from closecrm.api.client import CloseAPIError
from closecrm.engine.op import Op
from closecrm.engine.view import View
from closecrm.engine.writes.cache import IdCache, RecordCache
from closecrm.engine.writes.layer import Store

Record = dict[str, Any]
DRY_RUN_MARK = "_dry_"  # in every id a dry run makes up: lead_dry_1, cont_dry_2


class _RealHints:
    """The real engine's id cache as read-only hints: a dry run forgets nothing in it or in the ledger."""

    def __init__(self, ids: IdCache) -> None:
        self._ids = ids

    def ids(self, key: str) -> tuple[str, ...]:
        return self._ids.ids(key)

    def forget(self, key: str, record_id: str) -> None:
        pass


class _DryRecords:
    """What this dry run wrote (kept whole), over what it read, over what the real engine knows."""

    def __init__(self, real: Any, size: int) -> None:
        self.written: dict[str, Record] = {}
        self.contacts_of: dict[str, set[str]] = {}  # lead id -> contacts this run wrote under it
        self._read = RecordCache(size)
        self._real = real

    def get(self, record_id: str) -> Record | None:
        return self.written.get(record_id) or self._read.get(record_id) or self._real.get(record_id)

    def put(self, record: Record) -> None:
        self._read.put(record)

    def forget(self, record_id: str) -> None:
        self._read.forget(record_id)

    def write(self, record: Record) -> None:
        self.written[record["id"]] = record
        if record.get("lead_id"):
            self.contacts_of.setdefault(record["lead_id"], set()).add(record["id"])


class DryWrites(Store):
    def __init__(self, real: Store, cache_size: int) -> None:
        super().__init__(
            real.client,
            real.settings,
            IdCache(sys.maxsize, remembered=_RealHints(real.ids)),
            _DryRecords(real.records, cache_size),
        )
        self._written: _DryRecords = self.records  # type: ignore[assignment]
        self.doubts = real.doubts  # read only: the hits a real run would read by id first, this one does too
        self._numbers = count(1)

    async def _get(self, op: Op, record_id: str) -> Record:
        if record_id in self.gone:  # deleted or merged away earlier in this dry run
            raise CloseAPIError(404, {"error": "removed earlier in this dry run"}, "GET", record_id)
        written = self._written.written.get(record_id)
        if DRY_RUN_MARK in record_id and written is not None:
            record = dict(written)  # only this run knows it
        else:
            record = {**await super()._get(op, record_id), **(written or {})}
        if record_id.startswith("lead_"):
            contacts = {c["id"]: c for c in record.get("contacts") or []}
            for contact_id in self._written.contacts_of.get(record_id, ()):
                contacts[contact_id] = self._written.written[contact_id]
            record["contacts"] = list(contacts.values())
        return record

    def _write(self, view: View, record: Record) -> None:
        if record["id"].startswith("lead_"):
            self._written.write({k: v for k, v in record.items() if k != "contacts"})
            for contact in record.get("contacts") or []:
                self._written.write(contact)
            self.put_lead(view, record)
        else:
            self._written.write(record)
            self.put_contact(view, record)

    def _new_id(self, kind: str) -> str:
        return f"{kind}{DRY_RUN_MARK}{next(self._numbers)}"

    async def update_lead(self, op: Op, view: View, lead: Record, body: Record) -> None:
        self._write(view, {**lead, **body, "date_updated": dry_now()})

    async def update_contact(self, op: Op, view: View, contact: Record, body: Record) -> None:
        self._write(view, {**contact, **body, "date_updated": dry_now()})

    async def create_lead(self, op: Op, view: View, body: Record) -> Record:
        now = dry_now()
        lead_id = self._new_id("lead")
        contacts = [
            {**c, "id": self._new_id("cont"), "lead_id": lead_id, "date_created": now, "date_updated": now}
            for c in body.get("contacts") or []
        ]
        lead = {**body, "id": lead_id, "contacts": contacts, "date_created": now, "date_updated": now}
        self.created(op, lead)
        self._write(view, lead)
        return lead

    async def create_contact(self, op: Op, view: View, body: Record) -> Record:
        now = dry_now()
        contact = {**body, "id": self._new_id("cont"), "date_created": now, "date_updated": now}
        self.created(op, contact)
        self._write(view, contact)
        return contact

    async def delete_contact(self, op: Op, view: View, contact: Record) -> None:
        self._written.written.pop(contact["id"], None)
        self.removed(view, contact["id"])

    async def merge_leads(self, op: Op, view: View, source: str, into: str) -> None:
        for contact_id in self._written.contacts_of.pop(source, set()):
            contact = self._written.written.get(contact_id)
            if contact is not None:
                self._written.write({**contact, "lead_id": into})
        self.moved(view, source, into)

    def learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None:
        """Nothing was created: the created-id ledger hears nothing of a dry run."""


_clock = count(1)


def dry_now() -> str:
    """A date after every real one, increasing, so what a dry run writes sorts as the newest."""
    return f"9999-12-31T23:59:59.{next(_clock):06d}+00:00"
