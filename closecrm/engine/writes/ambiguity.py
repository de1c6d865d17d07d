"""Creates whose answer was lost: Close may have committed a POST it did not confirm, and has no
idempotency key. Before sending one again, find out (docs/DESIGN.md, "Delivery guarantees").

After an ambiguous ``POST /lead/`` the engine searches until the record shows up, or until a search
*started* ``settle_seconds`` after the failed POST has not found it either; only then does it send
the create again. After an ambiguous ``POST /contact/`` it reads the lead by id (its contact list
does not lag). If every attempt is ambiguous the request fails as ``ambiguous_write`` and, for
``unsettled_seconds``, any create for the same identity first makes that same post-lag search.
Found: ``Redo``, the request is decided again with what is now known.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from closecrm.api.client import AmbiguousWriteError, CloseAPIError
from closecrm.engine import diff
from closecrm.engine.op import Op
from closecrm.engine.view import Search, View
from closecrm.model import Settings, UpsertRequest

Record = dict[str, Any]


class Finder(Protocol):
    """The engine's lookups, as a write that lost its answer uses them to look again."""

    search: Search

    def take_hits(self, view: View, store: Any, leads: Iterable[Record], contacts: Iterable[Record]) -> None: ...


class Writes(Protocol):
    """What a create whose answer was lost needs of the write layer (``writes.layer.Writes``)."""

    settings: Settings
    lookup: Finder
    settle_seconds: float
    unsettled: Unsettled

    async def call(self, op: Op, method: str, path: str, body: Any = None) -> Any: ...

    async def read(self, op: Op, view: View, record_id: str) -> Record: ...

    def created(self, op: Op, record: Record) -> None: ...

    def learned(self, kind: str, record_id: str, keys: Iterable[str], before: Iterable[str] = ()) -> None: ...
MAX_CREATE_ATTEMPTS = 3
MAX_UNSETTLED = 10_000  # identities remembered at once; the oldest is dropped first
MERGE_WAIT_SECONDS = 30.0  # how long a lead merge Close reports in progress is waited on


class Redo(Exception):
    """An ambiguous create turned out to have happened: decide again with what is now known."""


class Unsettled:
    """Identity -> when an ambiguous create for it was left unconfirmed, for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._since: OrderedDict[str, float] = OrderedDict()

    def mark(self, key: str, since: float) -> None:
        self._since[key] = since
        self._since.move_to_end(key)
        while len(self._since) > MAX_UNSETTLED:
            self._since.popitem(last=False)

    def since(self, key: str | None) -> float | None:
        since = self._since.get(key) if key is not None else None
        if since is not None and time.monotonic() - since > self.seconds:
            del self._since[key]
            return None
        return since

    def settle(self, key: str | None) -> None:
        if key is not None:
            self._since.pop(key, None)


def create_key(req: UpsertRequest, settings: Settings) -> str | None:
    """The identity a create is for: company id, else user id, else lookup email."""
    company_id = diff.company_id_of(req, settings)
    if company_id:
        return "company:" + company_id
    user_id = diff.user_id_of(req, settings)
    if user_id:
        return "user:" + user_id
    return "email:" + diff.email_key(req.contact_email) if req.contact_email else None


async def post_lead(w: Writes, op: Op, view: View, body: Record) -> Record:
    """``POST /lead/``, sent again only once a search made after the lag bound did not find it."""
    key = create_key(op.req, w.settings)
    since = w.unsettled.since(key)
    if since is not None:
        # An earlier create for this identity may have happened without search showing it yet.
        if await appeared(w, op, view, since):
            raise Redo()
        w.unsettled.settle(key)  # searched after the lag bound: it does not exist
    sent = 0
    for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
        try:
            return await w.call(op, "POST", "lead/", body)
        except AmbiguousWriteError as exc:
            # Whatever Close committed, it committed before this moment (the call may have
            # waited on pacing or 429s before it was sent): the lag bound counts from here.
            failed_at = time.monotonic()
            sent += exc.attempts
            if await appeared(w, op, view, failed_at):
                op.created = True
                raise Redo() from None
            if attempt == MAX_CREATE_ATTEMPTS:
                if key is not None:
                    w.unsettled.mark(key, failed_at)
                exc.attempts = sent  # the dead letter counts every POST, not just the last
                raise
    raise AssertionError("every attempt returns or raises")


async def post_contact(w: Writes, op: Op, view: View, body: Record) -> Record:
    """``POST /contact/`` into an existing lead, whose own GET shows without lag whether it happened."""
    lead_id = body["lead_id"]
    sent = 0
    for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
        try:
            return await w.call(op, "POST", "contact/", body)
        except AmbiguousWriteError as exc:
            # The lead's contacts before the POST: only this group writes to this lead, and a lost
            # POST added nothing to the view, so they can be listed now, when needed: the listing
            # scans the whole view, which grows with the run.
            known = {cid for cid, c in view.contacts.items() if c.get("lead_id") == lead_id}
            sent += exc.attempts
            if attempt == MAX_CREATE_ATTEMPTS:
                exc.attempts = sent  # the dead letter counts every POST, not just the last
                raise
            lead = await w.read(op, view, lead_id)
            new = [c for c in lead.get("contacts") or [] if c["id"] not in known and is_ours(op.req, c, w.settings)]
            if new:
                for c in new:  # search may not show it for a while yet
                    w.created(op, c)
                    w.learned("contact", c["id"], view.contact_keys(c))
                op.created = True
                raise Redo() from None
    raise AssertionError("every attempt returns or raises")


async def appeared(w: Writes, op: Op, view: View, since: float) -> bool:
    """After an ambiguous POST /lead/ at ``since``: search (which lags) until the record shows up,
    or until a search *started* ``settle_seconds`` after ``since`` has not found it either."""
    req, search = op.req, w.lookup.search
    company_id = diff.company_id_of(req, w.settings)
    user_id = diff.user_id_of(req, w.settings)
    deadline = since + w.settle_seconds
    pause = max(0.05, w.settle_seconds / 6)
    while True:
        started = time.monotonic()
        before = search.calls
        leads, contacts = await asyncio.gather(
            search.leads_by_company_ids([company_id] if company_id else [], req.lead_custom_fields),
            search.contacts_by_keys([user_id] if user_id else [], req.contact_emails[:1], req.contact_custom_fields),
        )
        op.calls += search.calls - before
        w.lookup.take_hits(view, w, leads, contacts)
        if company_id and (found := view.leads_with_company(company_id)):
            await w.read(op, view, found[0]["id"])  # its contacts, without search lag
            return True
        if not company_id and view.match_contacts(user_id, req.contact_email):
            return True
        if started >= deadline:
            return False
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())) or 0.01)


def is_ours(req: UpsertRequest, contact: Record, settings: Settings) -> bool:
    """Does a contact that appeared after an ambiguous POST look like the one this request sent?"""
    user_id = diff.user_id_of(req, settings)
    if user_id:
        return contact.get(diff.cf_key(settings.contact_custom_field_id_for_user_id)) == user_id
    wanted = diff.new_contact(req, settings)
    return all(
        diff.same_value(contact.get(k), v) for k, v in wanted.items() if k not in ("emails", "phones", "urls")
    ) and (
        not req.contact_email
        or any(
            diff.email_key(str(e.get("email", ""))) == diff.email_key(req.contact_email)
            for e in contact.get("emails") or []
        )
    )


async def remove(
    w: Writes, op: Op, method: str, path: str, body: Any, gone: str, merge: tuple[str, str] | None = None
) -> None:
    """A delete or a lead merge: ``GET gone`` answering 404 is what shows it happened.

    Neither is repeated blindly when its answer is lost (or says the record is missing): the record
    it removes is looked at first, and only sent for again while that record is still there. Close
    may finish a merge (``merge``: source, destination) after answering: while its LeadMerge activity
    says ``in_progress`` the source still answers 200, so that status is waited on instead.
    """
    sent = 0
    for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
        try:
            await w.call(op, method, path, body)
            return
        except CloseAPIError as exc:
            if not isinstance(exc, AmbiguousWriteError) and exc.status != 404:
                raise
            sent += exc.attempts
            try:
                await w.call(op, "GET", gone)
            except CloseAPIError as look:
                if look.status == 404:
                    return  # removed, by this call or an earlier one
                raise
            status = await merge_outcome(w, op, *merge) if merge is not None else None
            if status == "completed":
                return
            if status == "in_progress":  # still running at the deadline: sending it again could repeat it
                exc.attempts = sent
                raise exc from None
            if exc.status == 404 or attempt == MAX_CREATE_ATTEMPTS:
                exc.attempts = sent
                raise exc from None
    raise AssertionError("every attempt returns or raises")


async def merge_outcome(w: Writes, op: Op, source: str, destination: str) -> str | None:
    """The ``merge_status`` of the merge of ``source`` into ``destination`` that Close recorded (its
    LeadMerge activity, on the destination lead), waited on while ``in_progress`` for up to
    ``MERGE_WAIT_SECONDS`` (at least ``settle_seconds``); None when Close recorded none."""
    deadline = time.monotonic() + max(w.settle_seconds, MERGE_WAIT_SECONDS)
    pause = 0.05
    while True:
        listing = await w.call(op, "GET", f"activity/lead_merge/?lead_id={destination}")
        found = [
            a
            for a in (listing or {}).get("data") or []
            if isinstance(a, dict) and a.get("source_lead_id") == source
        ]
        status = str(found[0].get("merge_status")) if found else None
        if status != "in_progress" or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(1.0, pause * 2)
