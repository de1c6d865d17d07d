"""Finding what a batch may touch: batched searches into a view, then GET by id for what the id
cache knows and search does not show yet (search lags behind writes; a GET does not)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine import diff
from closecrm.engine.definitions import custom_field_definitions
from closecrm.engine.op import Op
from closecrm.engine.rules import alias
from closecrm.engine.rules.touches import lookup_keys
from closecrm.engine.view import Search, View
from closecrm.events.normalize import email_key
from closecrm.model import Settings, UpsertRequest

if TYPE_CHECKING:
    from closecrm.engine.writes.layer import Store

Record = dict[str, Any]
CUSTOM_FIELDS_MAX_AGE = 60.0  # seconds before an unknown custom field id makes us list them again


@dataclass(frozen=True)
class Terms:
    """One request's lookup: its keys, and the values the batched searches ask for."""

    keys: tuple[str, ...]
    company_id: str | None
    user_id: str | None
    emails: tuple[str, ...]  # compared form (email_key)
    lead_cfs: frozenset[str]
    contact_cfs: frozenset[str]
    also_user_ids: tuple[str, ...] = ()  # an alias's previous user id


class Lookup:
    def __init__(self, client: CloseClient, settings: Settings) -> None:
        self._client = client
        self.settings = settings
        self.search = Search(client, settings)
        self._custom_fields: dict[str, set[str]] = {"lead": set(), "contact": set()}
        self._custom_fields_read_at = 0.0

    def know_custom_fields(self, by_type: dict[str, set[str]]) -> None:
        """The organisation's custom field ids per object type, as the settings check listed them."""
        self._custom_fields = {t: set(by_type.get(t, ())) for t in ("lead", "contact")}
        self._custom_fields_read_at = time.monotonic()

    def terms(self, req: UpsertRequest) -> Terms | None:
        """What one request looks Close up by; None when it has no identity. Raises on a value no
        lookup can use (e.g. an email that is not text): the caller fails that request alone."""
        company_id = diff.company_id_of(req, self.settings)
        user_id = diff.user_id_of(req, self.settings)
        emails = tuple(email_key(e) for e in req.contact_emails if e)
        lead_cfs = frozenset(cf for cf in req.lead_custom_fields if cf.removeprefix("custom."))
        contact_cfs = frozenset(cf for cf in req.contact_custom_fields if cf.removeprefix("custom."))
        keys = lookup_keys(req, self.settings)
        if not keys:
            return None
        also = tuple(u for u in alias.user_ids(req) if u != user_id) if alias.is_alias(req) else ()
        return Terms(keys, company_id, user_id, emails, lead_cfs, contact_cfs, also)

    async def search_into(self, view: View, store: Store, terms: Sequence[Terms]) -> int:
        """Fill the view for these requests with batched searches; returns the calls made."""
        before = self.search.calls
        company_ids = {t.company_id for t in terms if t.company_id}
        user_ids = {t.user_id for t in terms if t.user_id} | {u for t in terms for u in t.also_user_ids}
        emails = {e for t in terms for e in t.emails}
        lead_cfs = {cf for t in terms for cf in t.lead_cfs}
        contact_cfs = {cf for t in terms for cf in t.contact_cfs}
        listed = await self._known_custom_fields(lead_cfs | contact_cfs)
        # Ask search only for custom fields that exist: one bad id in one request must not fail the batch.
        lead_cfs = {cf for cf in lead_cfs if cf.removeprefix("custom.") in self._custom_fields["lead"]}
        contact_cfs = {
            cf for cf in contact_cfs if cf.removeprefix("custom.") in self._custom_fields["contact"]
        }
        leads, contacts = await asyncio.gather(
            self.search.leads_by_company_ids(company_ids, lead_cfs),
            self.search.contacts_by_keys(user_ids, emails, contact_cfs),
        )
        self.take_hits(view, store, leads, contacts)
        return self.search.calls - before + listed

    async def _known_custom_fields(self, mentioned: set[str]) -> int:
        """Custom field ids per object type, read once (and again, at most once a minute, for unknown ids)."""
        unknown = (
            {cf.removeprefix("custom.") for cf in mentioned}
            - self._custom_fields["lead"]
            - self._custom_fields["contact"]
        )
        stale = time.monotonic() - self._custom_fields_read_at > CUSTOM_FIELDS_MAX_AGE
        if not unknown or (self._custom_fields_read_at and not stale):
            return 0
        self._custom_fields_read_at = time.monotonic()
        for object_type in ("lead", "contact"):
            definitions = await custom_field_definitions(self._client, object_type)
            self._custom_fields[object_type] = {f["id"] for f in definitions}
        return 2

    def take_hits(self, view: View, store: Store, leads: Iterable[Record], contacts: Iterable[Record]) -> None:
        """Search hits into the view, each after the copy the store may remember of it.

        The store's copy was read by id or returned by a write of this engine. When search knows
        no newer version, that copy is as good a base for merging lists as a read would be: a
        request that appends to a contact an earlier batch created or read makes no GET first.
        """
        leads = [h for h in leads if h["id"] not in store.gone]  # merged away or deleted: search lags
        contacts = [h for h in contacts if h["id"] not in store.gone]
        for hit in leads:
            cached = store.records.get(hit["id"])
            if cached is not None:
                view.put_lead(cached, fresh=not _later(hit, cached))
            view.put_lead(hit, fresh=False)
            store.ids.add_all(view.lead_keys(view.leads[hit["id"]]), hit["id"])
        for hit in contacts:
            cached = store.records.get(hit["id"])
            if cached is not None:
                view.put_contact(cached, fresh=not _later(hit, cached))
            view.put_contact(hit, fresh=False)
            store.ids.add_all(view.contact_keys(view.contacts[hit["id"]]), hit["id"])

    async def confirm_cached(self, view: View, store: Store, keys: set[str]) -> int:
        """GET by id every remembered record of these keys that the view lacks or shows without the key,
        and every search hit of these keys the job may have changed since (``Store.doubtful``).

        The first are the records search has not caught up with; the second, hits search may show as
        they were before the job (an earlier run, another writer) took the key off them, deleted them
        or merged their lead away. A GET does not lag. Returns the calls made.
        """
        wanted: dict[str, set[str]] = {}
        doubted: dict[str, set[str]] = {}
        for key in keys:
            for record_id in store.ids.ids(key):
                if not view.matches(record_id, key) and record_id not in view.fresh:
                    wanted.setdefault(record_id, set()).add(key)
            for record_id in view.ids_for(key):
                if store.doubtful(view, key, record_id):
                    doubted.setdefault(record_id, set()).add(key)
        for record_id, was in doubted.items():
            wanted.setdefault(record_id, set()).update(was)
        if not wanted:
            return 0
        reads = Op(UpsertRequest())
        results = await asyncio.gather(*(store.read(reads, view, rid) for rid in wanted), return_exceptions=True)
        for (record_id, was), result in zip(wanted.items(), results, strict=True):
            if isinstance(result, CloseAPIError) and result.status == 404:
                if record_id in doubted:
                    store.removed(view, record_id)  # the hit is of a record that is gone
                store.ids.forget(record_id, was)
                store.records.forget(record_id)
            elif isinstance(result, BaseException):
                raise result
            elif not any(view.matches(record_id, k) for k in was):
                store.ids.forget(record_id, was)  # it no longer carries that key
        return reads.calls


def _later(a: Record, b: Record) -> bool:
    """Was ``a`` updated after ``b`` (ISO-8601 UTC ``date_updated``, so it compares as text)?"""
    return str(a.get("date_updated") or "") > str(b.get("date_updated") or "")
