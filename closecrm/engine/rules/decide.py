"""The decision procedure: what one request writes, given the view of Close its lookup built.

Top to bottom as the product rules read (docs/DESIGN.md, "Decision procedure"):
  0. identity: company id, user id, lookup email; none of them: skipped (``no_identity``);
  1. the lead by company id (the oldest), its contacts matched inside it;
  2. contacts by user id, then by email (a contact carrying another user id is another person);
  3. nothing found: one new lead, with the contact nested (and the contacts of the new people of
     that company who follow in the group: rules/nest.py);
  4. emails, phones and URLs are appended, never replaced (merged onto a copy read by id);
  5. scalars are overwritten only by values the request carries.
Each write a flag forbids is held back with its reason instead. The write layer (writes.py, or
dry.py for a dry run) sends the calls; this module only decides them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from closecrm.api.client import AmbiguousWriteError, CloseAPIError
from closecrm.engine import diff
from closecrm.engine.op import Op, describe
from closecrm.engine.rules import alias, nest
from closecrm.engine.view import View, company_key, email_lookup_key, user_key
from closecrm.engine.writes.ambiguity import MAX_CREATE_ATTEMPTS, Redo
from closecrm.engine.writes.layer import Store
from closecrm.journal import RecordingStopped
from closecrm.model import Outcome, Settings, UpsertRequest

log = logging.getLogger(__name__)

Record = dict[str, Any]
MAX_CONTACTS_PER_REQUEST = 10  # act on at most 10 matched contacts, oldest first
LISTS = ("emails", "phones", "urls")


def identity(req: UpsertRequest, settings: Settings) -> tuple[str, ...]:
    """Step 0: the lookup keys of the request's company id, user id and lookup email. None of
    them: the request could only create records nothing finds again, so it is skipped."""
    if alias.is_alias(req):  # the two user ids it links (none without the user-id field)
        return tuple(user_key(u) for u in alias.user_ids(req)) if diff.user_id_of(req, settings) else ()
    keys = []
    company_id = diff.company_id_of(req, settings)
    user_id = diff.user_id_of(req, settings)
    if company_id:
        keys.append(company_key(company_id))
    if user_id:
        keys.append(user_key(user_id))
    if req.contact_email:
        keys.append(email_lookup_key(req.contact_email))
    return tuple(keys)


def no_identity() -> Outcome:
    return Outcome(kind="skipped", reason="no_identity", branch="identity")


async def apply(
    req: UpsertRequest,
    view: View,
    writes: Store,
    shared_calls: int = 0,
    position: int = 0,
    offer: nest.Offer | None = None,
    made: Record | None = None,
) -> Outcome:
    """Decide and write one request; any error fails this request alone, with what it did so far.

    ``offer``: the requests after it that a lead it creates may carry nested (rules/nest.py); what
    it took is in the offer when this returns. ``made``: the contact a nested create whose answer
    was lost made for this request, counted as its creation.
    """
    op = Op(req, position=position)
    if made is not None:
        op.changes.extend(nested_changes(made))
        op.created = True
    return await settle(op, _decide(op, view, writes, offer), shared_calls)


async def _decide(op: Op, view: View, writes: Store, offer: nest.Offer | None) -> None:
    for _ in range(MAX_CREATE_ATTEMPTS + 1):
        try:
            await Decision(op, view, writes, offer).run()
            return
        except Redo:  # an ambiguous create did happen: decide again on what is now known
            offer = None  # the requests it would have carried are applied one at a time
            continue


async def settle(op: Op, work: Awaitable[None], shared_calls: int = 0) -> Outcome:
    """``op``'s outcome once ``work`` is done, or how it failed (one request's error is its own)."""
    try:
        await work
        return op.outcome(shared_calls)
    except CloseAPIError as exc:
        log.info("upsert failed: %s", exc)
        return op.failed(exc, shared_calls)
    except RecordingStopped as exc:  # the run stops; its one error says why, once
        return op.failed(exc, shared_calls)
    except Exception as exc:  # noqa: BLE001 - one request's bad value must not fail the others
        log.warning("upsert failed in the engine: %s", describe(exc))
        return op.failed(exc, shared_calls)


def nested_changes(body: Record) -> list[Record]:
    """A nested contact's create, as the request it belongs to lists it (``body`` names its lead)."""
    return diff.field_changes("contact", None, "create", {}, body, nested=True)


def refused(exc: CloseAPIError) -> bool:
    """Close said no to the request itself (a value it does not take), not to the rate or its health."""
    status = exc.status
    return not isinstance(exc, AmbiguousWriteError) and status is not None and 400 <= status < 500 and status != 429


class Decision:
    def __init__(self, op: Op, view: View, writes: Store, offer: nest.Offer | None = None) -> None:
        self.op, self.view, self.w = op, view, writes
        self.offer = offer
        self.settings = settings = writes.settings
        req = op.req
        self.flags = req.flags
        self.company_id = diff.company_id_of(req, settings)
        self.user_id = diff.user_id_of(req, settings)
        self.email = req.contact_email
        self.with_contact = diff.has_contact_fields(req, settings)
        company_cf = settings.lead_custom_field_id_for_company_id
        self.company_cf = diff.cf_key(company_cf) if company_cf else ""

    async def run(self) -> None:
        view, op = self.view, self.op
        if alias.is_alias(op.req):
            return await alias.run(self)
        # 1. The lead by company id (the oldest when there are several).
        if self.company_id and (leads := view.leads_with_company(self.company_id)):
            op.branch = "lead_by_company_id"
            return await self.lead_by_company_id(leads[0])
        # 2. Contacts by user id, then email, across the organisation.
        matched = self.match()[:MAX_CONTACTS_PER_REQUEST] if self.with_contact else []
        if matched and not self.company_id:
            op.branch = "contacts_without_company_id"
            return await self.contacts_without_company_id(matched)
        if matched:
            return await self.company_id_nobody_has(matched)
        # 3. Nothing found.
        op.branch = "nothing_found"
        if not self.flags.allow_creating_new_leads:
            op.block("creating_new_leads_not_allowed")
        elif self.with_contact and not self.flags.allow_creating_new_contacts:
            op.block("creating_new_contacts_not_allowed")
        else:
            await self.create_lead(with_contact=self.with_contact)

    def match(self, lead_id: str | None = None) -> list[Record]:
        """By user id; by email only when no contact has it, and never one carrying another user id."""
        return self.view.match_contacts(self.user_id, self.email, lead_id=lead_id)

    async def lead_by_company_id(self, lead: Record) -> None:
        await self.update_lead(lead, with_company_id=False)
        if not self.with_contact:
            return
        inside = self.match(lead_id=lead["id"])
        if inside:
            for contact in inside[:MAX_CONTACTS_PER_REQUEST]:
                await self.update_contact(contact)
        elif not self.flags.allow_creating_new_contacts:
            self.op.block("creating_new_contacts_not_allowed")
        elif self.match() and not self.flags.allow_creating_duplicate_contacts:
            self.op.block("creating_duplicate_contacts_not_allowed")  # the person is under another lead
        else:
            await self.create_contact(lead["id"])

    async def contacts_without_company_id(self, matched: list[Record]) -> None:
        for contact in matched:
            await self.update_contact(contact)
        if diff.lead_scalars(self.op.req, self.settings, with_company_id=False):
            for lead_id in dict.fromkeys(c["lead_id"] for c in matched):  # each of their leads, once
                lead = await self.w.lead(self.op, self.view, lead_id)
                if lead is not None:  # a lead that is gone is passed over
                    await self.update_lead(lead, with_company_id=False)

    async def company_id_nobody_has(self, matched: list[Record]) -> None:
        """The person exists, the company does not: adopt their lead if it has no company, else a new one."""
        oldest = await self.w.lead(self.op, self.view, matched[0]["lead_id"])
        if oldest is not None and oldest.get(self.company_cf) in (None, ""):
            self.op.branch = "adopt_lead"
            await self.update_lead(oldest, with_company_id=True)
            for contact in matched:
                if contact["lead_id"] == oldest["id"]:
                    await self.update_contact(contact)
            return
        self.op.branch = "duplicate_under_new_lead"
        for allowed, reason in (
            (self.flags.allow_creating_duplicate_contacts, "creating_duplicate_contacts_not_allowed"),
            (self.flags.allow_creating_new_leads, "creating_new_leads_not_allowed"),
            (self.flags.allow_creating_new_contacts, "creating_new_contacts_not_allowed"),
        ):
            if not allowed:
                self.op.block(reason)
                return
        await self.create_lead(with_contact=True)

    # ------------------------------------------------------------- the writes (rules 4 and 5)

    async def update_lead(self, lead: Record, *, with_company_id: bool) -> None:
        op = self.op
        op.touch(lead_id=lead["id"])
        body = diff.lead_update(lead, op.req, self.settings, with_company_id=with_company_id)
        if not body:
            return
        if not self.flags.allow_updating_existing_leads:
            op.block("updating_existing_leads_not_allowed")
            return
        op.changes.extend(diff.field_changes("lead", lead["id"], "update", lead, body))
        await self.w.update_lead(op, self.view, lead, body)
        op.updated = True

    def contact_update(self, contact: Record) -> Record:
        """Scalars the request carries that differ, and every list it adds to, merged in full."""
        return {
            **diff.contact_scalar_update(contact, self.op.req, self.settings),
            **diff.contact_list_update(contact, self.op.req),
        }

    async def update_contact(self, contact: Record) -> None:
        op = self.op
        op.touch(lead_id=contact.get("lead_id"), contact_id=contact["id"])
        body = self.contact_update(contact)
        if not body:
            return
        if not self.flags.allow_updating_existing_contacts:
            op.block("updating_existing_contacts_not_allowed")
            return
        if any(k in body for k in LISTS) and contact["id"] not in self.view.fresh:
            # PUT replaces whole lists: merge onto what a read by id says, never onto a search hit.
            read = await self.w.read(op, self.view, contact["id"])
            contact = self.view.contacts.get(contact["id"], read)
            body = self.contact_update(contact)
            if not body:
                return
        op.changes.extend(diff.field_changes("contact", contact["id"], "update", contact, body))
        await self.w.update_contact(op, self.view, contact, body)
        op.updated = True

    async def create_contact(self, lead_id: str) -> None:
        op = self.op
        body = {**diff.new_contact(op.req, self.settings), "lead_id": lead_id}
        op.changes.extend(diff.field_changes("contact", None, "create", {}, body))
        contact = await self.w.create_contact(op, self.view, body)
        op.touch(lead_id=lead_id, contact_id=contact["id"])
        op.created = True

    async def create_lead(self, *, with_contact: bool) -> None:
        op = self.op
        body = diff.new_lead(op.req, self.settings, with_contact=with_contact)
        op.changes.extend(diff.field_changes("lead", None, "create", {}, body))
        if with_contact:
            op.changes.extend(diff.field_changes("contact", None, "create", {}, body["contacts"][0]))
        nested = self.nestable(body)
        alone = body
        if nested:
            body = {**body, "contacts": [*(body.get("contacts") or []), *(n.body for n in nested)]}
        try:
            lead = await self.w.create_lead(op, self.view, body)
        except Redo:
            if nested and op.created:  # the create was made: the followers' contacts came with it
                self.made(nested)
            raise
        except CloseAPIError as exc:
            if not nested or not refused(exc):
                raise
            # One follower's value may be what Close refused: the lead goes alone, and each
            # follower is applied one at a time, failing by its own values only.
            nested = []
            lead = await self.w.create_lead(op, self.view, alone)
        theirs = nest.assign(lead.get("contacts") or [], nested, self.view)
        op.touch(lead_id=lead["id"])
        for contact in lead.get("contacts") or []:
            if not any(contact is c for c in theirs):
                op.touch(contact_id=contact["id"])
        op.created = True
        if nested:
            await self.finish(lead, nested, theirs)

    def nestable(self, body: Record) -> list[nest.Nested]:
        if self.offer is None or not self.offer.followers or not self.company_id:
            return []
        return nest.nestable(body, self.company_id, self.offer.followers, self.view, self.settings)

    def made(self, nested: list[nest.Nested]) -> None:
        """After a lost create that was made: each follower whose contact the lead shows is applied
        one at a time, and counts that contact as its creation."""
        leads = self.view.leads_with_company(self.company_id) if self.company_id else []
        if self.offer is None or not leads:
            return
        lead_id = leads[0]["id"]
        for k, n in enumerate(nested):
            user_id = diff.user_id_of(n.follower.req, self.settings)
            if self.view.match_contacts(user_id, n.follower.req.contact_email, lead_id=lead_id):
                self.offer.made[k] = {**n.body, "lead_id": lead_id}

    async def finish(self, lead: Record, nested: list[nest.Nested], theirs: list[Record | None]) -> None:
        """The outcomes of the followers the new lead carried, as one at a time would have them."""
        offer = self.offer
        if offer is None:
            return
        for k, (n, contact) in enumerate(zip(nested, theirs, strict=True)):
            if contact is None:  # not in Close's answer: applied one at a time, which finds it
                offer.made.update({j: {**m.body, "lead_id": lead["id"]} for j, m in enumerate(nested[k:], k)})
                return
            op = Op(n.follower.req, position=n.follower.position)
            self.w.born.put(contact["id"], op.position)  # one at a time, it would have been created then
            offer.outcomes.append(await settle(op, self.follow(op, lead["id"], n, contact)))

    async def follow(self, op: Op, lead_id: str, n: nest.Nested, contact: Record) -> None:
        """One follower: the lead update it would make first (none, unless Close stored a value
        otherwise than it was sent), then its contact, created nested."""
        op.branch = "lead_by_company_id"
        await Decision(op, self.view, self.w).update_lead(self.view.leads[lead_id], with_company_id=False)
        op.changes.extend(nested_changes({**n.body, "lead_id": lead_id}))
        op.touch(lead_id=lead_id, contact_id=contact["id"])
        op.created = True
