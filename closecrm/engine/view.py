"""Batched lookups through /data/search/ and the View: an exact, indexed picture of the records a batch may touch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine.diff import cf_key
from closecrm.events.normalize import email_key
from closecrm.model import Settings

Record = dict[str, Any]

TERMS_PER_QUERY = 100  # values per query: keeps query bodies small and results under a few pages
PAGE_LIMIT = 200  # Close's maximum _limit
CURSOR_RESTARTS = 3
LEAD_FIELDS = ("id", "name", "description", "status_id", "date_created", "date_updated")
CONTACT_FIELDS = (
    "id",
    "lead_id",
    "name",
    "title",
    "emails",
    "phones",
    "urls",
    "date_created",
    "date_updated",
)


def _sort(object_type: str) -> list[Record]:
    return [
        {
            "direction": "asc",
            "field": {"type": "regular_field", "object_type": object_type, "field_name": "date_created"},
        }
    ]


def company_key(company_id: str) -> str:
    return f"company:{company_id}"


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def email_lookup_key(email: str) -> str:
    return f"email:{email_key(email)}"


def age(record: Record) -> tuple[str, str]:
    """Oldest first: Close's date_created (ISO-8601 UTC, so it sorts as text), then id."""
    return (str(record.get("date_created") or ""), str(record.get("id")))


def cursor_refused(exc: CloseAPIError) -> bool:
    """A 400 that names the cursor (expired, or no longer valid): the walk can start again."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return exc.status == 400 and "cursor" in (body.get("field-errors") or {})


def _chunks(values: Sequence[str], n: int) -> list[list[str]]:
    return [list(values[i : i + n]) for i in range(0, len(values), n)]


def _exact(field: Record, value: str) -> Record:
    """A field whose whole value is ``value``. A `text` condition in `exact_value` mode, as public code
    written against Close looks values up; it does not depend on whether Close's `term` condition
    folds case, which no Close document says (docs/DESIGN.md, "Requests the job sends")."""
    return {
        "type": "field_condition",
        "field": field,
        "condition": {"type": "text", "mode": "exact_value", "value": value},
    }


def _any(conditions: list[Record]) -> Record:
    return conditions[0] if len(conditions) == 1 else {"type": "or", "queries": conditions}


def _custom_term(cf_id: str, values: list[str]) -> Record:
    """Records whose text custom field holds one of ``values`` (the view filters hits exactly)."""
    field = {"type": "custom_field", "custom_field_id": cf_id.removeprefix("custom.")}
    return _any([_exact(field, v) for v in values])


def _email_term(values: list[str]) -> Record:
    """Contacts with one of these emails, given lower-cased (the view filters hits exactly)."""
    field = {"type": "regular_field", "object_type": "contact_email", "field_name": "email"}
    return {
        "type": "has_related",
        "this_object_type": "contact",
        "related_object_type": "contact_email",
        "related_query": _any([_exact(field, v) for v in values]),
    }


class Search:
    """Resolves many company ids / user ids / emails with a handful of search calls.

    Search is neither exact nor current: callers filter hits exactly (the View does) and
    treat a miss as "not found yet", never as "does not exist".
    """

    def __init__(self, client: CloseClient, settings: Settings) -> None:
        self._client = client
        self._company_cf = settings.lead_custom_field_id_for_company_id
        self._user_cf = settings.contact_custom_field_id_for_user_id
        self.calls = 0

    async def _run(self, query: Record, fields: dict[str, list[str]]) -> list[Record]:
        hits: list[Record] = []
        cursor: str | None = None
        restarts = 0
        object_type = query["queries"][0]["object_type"]
        while True:
            body = {
                "query": query,
                "_limit": PAGE_LIMIT,
                "cursor": cursor,
                "sort": _sort(object_type),
                "_fields": fields,
            }
            self.calls += 1
            try:
                page = await self._client.post("data/search/", body)
            except CloseAPIError as exc:
                # A cursor Close no longer takes (they expire): read again from the start; the
                # view keeps one copy of a record read twice.
                if cursor is None or restarts >= CURSOR_RESTARTS or not cursor_refused(exc):
                    raise
                cursor, restarts = None, restarts + 1
                continue
            hits.extend(h for h in page.get("data") or [] if isinstance(h, dict) and h.get("id"))
            cursor = page.get("cursor")
            if not cursor:
                return hits

    async def leads_by_company_ids(
        self, company_ids: Iterable[str], cf_ids: Iterable[str] = ()
    ) -> list[Record]:
        values = sorted(set(company_ids))
        if not self._company_cf or not values:
            return []
        fields = {"lead": [*LEAD_FIELDS, *sorted({cf_key(self._company_cf), *map(cf_key, cf_ids)})]}
        queries = [
            {
                "type": "and",
                "queries": [
                    {"type": "object_type", "object_type": "lead"},
                    _custom_term(self._company_cf, chunk),
                ],
            }
            for chunk in _chunks(values, TERMS_PER_QUERY)
        ]
        return await self._run_all(queries, fields)

    async def _run_all(self, queries: list[Record], fields: dict[str, list[str]]) -> list[Record]:
        """Chunks run concurrently (the pacer keeps them inside the search budget); hits keep chunk order."""
        pages = await asyncio.gather(*(self._run(q, fields) for q in queries))
        return [hit for page in pages for hit in page]

    async def contacts_by_keys(
        self, user_ids: Iterable[str], emails: Iterable[str], cf_ids: Iterable[str] = ()
    ) -> list[Record]:
        """Contacts with any of the user ids or any of the emails; one `or` query per chunk of each."""
        users = sorted(set(user_ids)) if self._user_cf else []
        mails = sorted({email_key(e) for e in emails if e})
        if not users and not mails:
            return []
        extra = set(map(cf_key, cf_ids))
        if self._user_cf:
            extra.add(cf_key(self._user_cf))
        fields = {"contact": [*CONTACT_FIELDS, *sorted(extra)]}
        user_chunks = _chunks(users, TERMS_PER_QUERY)
        mail_chunks = _chunks(mails, TERMS_PER_QUERY)
        queries = []
        for i in range(max(len(user_chunks), len(mail_chunks))):
            either: list[Record] = []
            if i < len(user_chunks):
                either.append(_custom_term(self._user_cf, user_chunks[i]))
            if i < len(mail_chunks):
                either.append(_email_term(mail_chunks[i]))
            condition = either[0] if len(either) == 1 else {"type": "or", "queries": either}
            queries.append(
                {"type": "and", "queries": [{"type": "object_type", "object_type": "contact"}, condition]}
            )
        return await self._run_all(queries, fields)


class Ranks(Protocol):
    def get(self, key: str) -> int | None: ...


class View:
    """The records an operation knows about, indexed by company id, user id and email, kept exact.

    A record put here replaces an older copy only when it is at least as new (``date_updated``),
    so a lagging search hit never overwrites what a GET or a write response told us. ``fresh``
    holds the ids read by id or written during this operation: safe bases for merging lists.
    """

    def __init__(self, settings: Settings, born: Ranks | None = None) -> None:
        self._born = born
        self._company_cf = (
            cf_key(settings.lead_custom_field_id_for_company_id)
            if settings.lead_custom_field_id_for_company_id
            else ""
        )
        self._user_cf = (
            cf_key(settings.contact_custom_field_id_for_user_id)
            if settings.contact_custom_field_id_for_user_id
            else ""
        )
        self.leads: dict[str, Record] = {}
        self.contacts: dict[str, Record] = {}
        self.fresh: set[str] = set()
        self._index: dict[str, set[str]] = {}
        self._keys_of: dict[str, tuple[str, ...]] = {}

    # ---------------------------------------------------------------- keys

    def lead_keys(self, lead: Record) -> tuple[str, ...]:
        value = lead.get(self._company_cf) if self._company_cf else None
        return (company_key(str(value)),) if value not in (None, "") else ()

    def contact_keys(self, contact: Record) -> tuple[str, ...]:
        keys = []
        value = contact.get(self._user_cf) if self._user_cf else None
        if value not in (None, ""):
            keys.append(user_key(str(value)))
        for item in contact.get("emails") or []:
            if isinstance(item, dict) and item.get("email"):
                keys.append(email_lookup_key(str(item["email"])))
        return tuple(dict.fromkeys(keys))

    # ---------------------------------------------------------------- puts

    def _newer(self, old: Record | None, new: Record, fresh: bool) -> bool:
        if old is None:
            return True
        new_at, old_at = str(new.get("date_updated") or ""), str(old.get("date_updated") or "")
        if fresh:
            return new_at >= old_at  # a slow GET must not undo a write response that overtook it
        if new["id"] in self.fresh:
            return False
        return new_at > old_at

    def _reindex(self, record_id: str, keys: tuple[str, ...]) -> None:
        for key in self._keys_of.get(record_id, ()):
            self._index.get(key, set()).discard(record_id)
        for key in keys:
            self._index.setdefault(key, set()).add(record_id)
        self._keys_of[record_id] = keys

    def put_lead(self, lead: Record, *, fresh: bool) -> bool:
        """Returns whether the copy was taken. A lead's nested contacts are put too."""
        contacts = lead.get("contacts")
        record = {k: v for k, v in lead.items() if k != "contacts"}
        taken = self._newer(self.leads.get(record["id"]), record, fresh)
        if taken:
            self.leads[record["id"]] = record
            self._reindex(record["id"], self.lead_keys(record))
            if fresh:
                self.fresh.add(record["id"])
        for contact in contacts or []:
            # Records are never changed in place: one that names its lead is kept as it is, not copied.
            if not contact.get("lead_id"):
                contact = {**contact, "lead_id": record["id"]}
            self.put_contact(contact, fresh=fresh)
        return taken

    def put_contact(self, contact: Record, *, fresh: bool) -> bool:
        taken = self._newer(self.contacts.get(contact["id"]), contact, fresh)
        if taken:
            self.contacts[contact["id"]] = contact
            self._reindex(contact["id"], self.contact_keys(contact))
            if fresh:
                self.fresh.add(contact["id"])
        return taken

    def drop(self, record_id: str) -> None:
        self.leads.pop(record_id, None)
        self.contacts.pop(record_id, None)
        self.fresh.discard(record_id)
        self._reindex(record_id, ())

    # ------------------------------------------------------------- queries

    def age(self, record: Record) -> tuple[int, Any, str]:
        """Oldest first. Records the engine created (``born``: id -> input position of the request
        that created them) come after all others, in input order; the rest by `age`."""
        position = self._born.get(record["id"]) if self._born is not None else None
        if position is None:
            return (0, *age(record))
        return (1, position, str(record["id"]))

    def ids_for(self, key: str) -> set[str]:
        return set(self._index.get(key, ()))

    def leads_with_company(self, company_id: str) -> list[Record]:
        return sorted(
            (self.leads[i] for i in self.ids_for(company_key(company_id)) if i in self.leads), key=self.age
        )

    def contacts_with_user(self, user_id: str) -> list[Record]:
        return sorted(
            (self.contacts[i] for i in self.ids_for(user_key(user_id)) if i in self.contacts), key=self.age
        )

    def contacts_with_email(self, email: str) -> list[Record]:
        return sorted(
            (self.contacts[i] for i in self.ids_for(email_lookup_key(email)) if i in self.contacts), key=self.age
        )

    def match_contacts(
        self, user_id: str | None, email: str | None, lead_id: str | None = None
    ) -> list[Record]:
        """To "match a contact": by user id; when none has it, by email (exact, case-insensitive).

        A contact that carries a different user id is another person, whatever its emails: the
        email fallback of a request with a user id never matches it (so it is never renamed or
        re-stamped). A request without a user id may match any contact by email.
        """

        def within(records: list[Record]) -> list[Record]:
            return [c for c in records if lead_id is None or c.get("lead_id") == lead_id]

        if user_id:
            by_user = within(self.contacts_with_user(user_id))
            if by_user:
                return by_user
        if not email:
            return []
        by_email = within(self.contacts_with_email(email))
        if user_id and self._user_cf:
            by_email = [c for c in by_email if self.user_id_of(c) in (None, user_id)]
        return by_email

    def user_id_of(self, contact: Record) -> str | None:
        """The user id a contact carries, or None (also when the user-id field is not configured)."""
        value = contact.get(self._user_cf) if self._user_cf else None
        return None if value in (None, "") else str(value)

    def matches(self, record_id: str, key: str) -> bool:
        return record_id in self._index.get(key, ())
