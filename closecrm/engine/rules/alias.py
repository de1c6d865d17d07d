"""Alias: ``previousId`` (P) and ``userId`` (U) are one person (docs/DESIGN.md, "Alias").

1. The contacts with user id P and with U, at most 10 each, oldest first. No P contact: unchanged.
2. No U contact: write U onto every P contact (re-key), if updating contacts is allowed.
3. Both: only with ``allow_merging``. The destination is the oldest U contact. A P contact under
   another lead first has that lead merged into the destination's (``POST /lead/merge/``), unless
   two of the leads that would end as one carry different company ids
   (``skipped:alias_across_companies``, nothing written).
   Each P contact's emails, phones and URLs are then appended to the destination (full lists) and
   the P contact is deleted. Every merge and deletion is in the outcome's changes (and so the audit
   log), with ids, so a person can undo it by hand: a deleted contact's whole record as read by id.

Search may show a contact as it was (another run re-keyed, deleted or moved it a moment ago), so an
alias decides only on P contacts, and a destination, read by id: a contact that no longer carries
the user id it was found by is not one of them.
"""

from __future__ import annotations

from typing import Any, Protocol

from closecrm.engine import diff
from closecrm.engine.op import Op
from closecrm.engine.view import View
from closecrm.engine.writes.layer import Store
from closecrm.model import Flags, Outcome, Settings, UpsertRequest

Record = dict[str, Any]


class Deciding(Protocol):
    """What an alias needs of the decision it runs in (``decide.Decision``)."""

    op: Op
    view: View
    w: Store
    flags: Flags
    company_cf: str
MAX_CONTACTS_PER_ID = 10


def is_alias(req: UpsertRequest) -> bool:
    return req.alias_previous_id is not None


def unusable(req: UpsertRequest, settings: Settings) -> Outcome | None:
    """An alias the engine cannot look up at all: user ids live in a custom field that is not set."""
    if is_alias(req) and not settings.contact_custom_field_id_for_user_id:
        return Outcome(kind="skipped", reason="no_user_id_field", branch="alias")
    return None


def user_ids(req: UpsertRequest) -> tuple[str, ...]:
    """The user ids an alias looks up: U and P."""
    return tuple(dict.fromkeys(str(u) for u in (req.contact_user_id, req.alias_previous_id) if u))


def _list_values(contact: Record) -> UpsertRequest:
    """A contact's emails, phones and URLs as a request that appends them."""
    values = {}
    for attr, list_key, item_key, _ in diff.LISTS:
        values[attr] = tuple(
            str(i[item_key]) for i in contact.get(list_key) or [] if isinstance(i, dict) and i.get(item_key)
        )
    return UpsertRequest(**values)


async def run(d: Deciding) -> None:
    op, view, w = d.op, d.view, d.w
    req = op.req
    op.branch = "alias"
    previous_id, user_id = str(req.alias_previous_id), str(req.contact_user_id)
    if previous_id == user_id:
        return
    previous = await _confirmed(d, previous_id, every=True)
    if not previous:
        return  # nothing to re-key: unchanged
    current = await _confirmed(d, user_id, every=False)
    if not current:
        op.branch = "alias_rekey"
        user_cf = diff.cf_key(w.settings.contact_custom_field_id_for_user_id)
        for contact in previous:
            op.touch(lead_id=contact.get("lead_id"), contact_id=contact["id"])
            if not d.flags.allow_updating_existing_contacts:
                op.block("updating_existing_contacts_not_allowed")
                return
            body = {user_cf: user_id}
            op.changes.extend(diff.field_changes("contact", contact["id"], "update", contact, body))
            await w.update_contact(op, view, contact, body)
            op.updated = True
        return
    op.branch = "alias_merge"
    if not d.flags.allow_merging:
        op.block("merging_not_allowed")
        return
    destination = current[0]
    into = destination["lead_id"]
    destination_lead = await w.lead(op, view, into, fresh=True)
    sources: dict[str, Record | None] = {}
    for contact in previous:
        if contact["lead_id"] != into and contact["lead_id"] not in sources:
            sources[contact["lead_id"]] = await w.lead(op, view, contact["lead_id"], fresh=True)
    leads = [destination_lead, *sources.values()]  # all end as one: no two may differ
    if any(_different_companies(d.company_cf, a, b) for a in leads for b in leads):
        op.block("alias_across_companies")
        return
    for lead_id, lead in sources.items():
        if lead is None:
            continue  # gone already (merged by an earlier attempt): its contacts were moved
        op.changes.append({"object": "lead", "id": lead_id, "action": "merge", "into": into})
        await w.merge_leads(op, view, lead_id, into)
        destination_lead = _absorb(d, destination_lead, lead)
        op.touch(lead_id=lead_id)
    op.touch(lead_id=into, contact_id=destination["id"])
    for contact in previous:
        destination = await _merge_contact(d, destination, contact)
    op.updated = True


async def _confirmed(d: Deciding, user_id: str, *, every: bool) -> list[Record]:
    """The contacts with this user id, at most 10, oldest first, as reads by id say now: each (``every``)
    or the first (the destination) is read unless the view's copy was read by id or written already."""
    op, view, w = d.op, d.view, d.w
    read: set[str] = set()
    while True:
        found = view.contacts_with_user(user_id)[:MAX_CONTACTS_PER_ID]
        unread = [c["id"] for c in (found if every else found[:1]) if c["id"] not in view.fresh | read]
        if not unread:
            return found
        for contact_id in unread:
            read.add(contact_id)
            await w.confirm(op, view, contact_id)  # out of the view when gone; reindexed by its real keys


def _absorb(d: Deciding, into: Record | None, source: Record) -> Record | None:
    """Close gives the destination lead the values it lacks from the merged one (custom fields, name,
    description, URL): so does the engine's copy, which the requests after this one decide on."""
    lacking = {
        k: v
        for k, v in source.items()
        if (k.startswith("custom.") or k in ("name", "description", "url"))
        and v not in (None, "")
        and into is not None
        and into.get(k) in (None, "")
    }
    if into is None or not lacking:
        return into
    merged, fresh = {**into, **lacking}, into["id"] in d.view.fresh
    d.view.drop(into["id"])
    d.view.put_lead(merged, fresh=fresh)
    d.w.records.put(merged)
    d.w.ids.add_all(d.view.lead_keys(merged), into["id"])
    return merged


def _different_companies(company_cf: str, a: Record | None, b: Record | None) -> bool:
    if not company_cf or a is None or b is None:
        return False
    ca, cb = a.get(company_cf), b.get(company_cf)
    return ca not in (None, "") and cb not in (None, "") and str(ca) != str(cb)


async def _merge_contact(d: Deciding, destination: Record, source: Record) -> Record:
    """Append the source contact's lists to the destination, then delete the source."""
    op, view, w = d.op, d.view, d.w
    if source["id"] not in view.fresh:
        source = await w.read(op, view, source["id"])
    values = _list_values(source)
    body = diff.contact_list_update(destination, values)
    if body and destination["id"] not in view.fresh:
        destination = await w.read(op, view, destination["id"])
        body = diff.contact_list_update(destination, values)
    if body:
        op.changes.extend(diff.field_changes("contact", destination["id"], "update", destination, body))
        await w.update_contact(op, view, destination, body)
        destination = view.contacts.get(destination["id"], destination)
    op.changes.append(
        {
            "object": "contact",
            "id": source["id"],
            "action": "delete",
            "merged_into": destination["id"],
            "old": dict(source),  # as read by id: custom fields too, so the deletion can be undone by hand
        }
    )
    await w.delete_contact(op, view, source)
    op.touch(contact_id=source["id"])
    return destination
