"""What one request may touch, read off the rules (decide.py, alias.py) and the view it is decided on.

A request reads by its lookup keys (``lookup_keys``): its company id, user id and every email (an
alias: the two user ids). The records those keys lead to, in the view or the engine's memory, and
each found contact's lead, are all it may read. It writes only among them, plus what it creates:

- a lead found by its company id (updated; a new contact goes under it);
- a contact found by its user id or an email (updated), and that contact's lead (updated, adopted);
- an alias's contacts of either user id (re-keyed, appended to, deleted) and their leads (merged).

The keys it may give a record or take from one are its own (a created or adopted lead gets its company
id; a contact its user id and emails; a re-key swaps the two user ids), and for an alias the keys
its contacts carry: merging a contact appends its emails to the one it goes into. A lead merged
into another takes its contacts along: the scheduler counts a contact with its lead.

tests/fuzz/test_fuzz_touches.py checks every write the rules make against this statement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from closecrm.engine import diff
from closecrm.engine.rules import alias
from closecrm.engine.rules.decide import identity
from closecrm.engine.view import View, company_key
from closecrm.engine.writes.layer import Store
from closecrm.events.normalize import email_key
from closecrm.model import Settings, UpsertRequest


def lookup_keys(req: UpsertRequest, settings: Settings) -> tuple[str, ...]:
    """Every key whose records this request may read or change: its identity (decide.identity) and
    all its emails, not just the lookup one. Empty when it has no identity."""
    keys = identity(req, settings)
    if not keys:
        return ()
    emails = (email_key(e) for e in req.contact_emails if e)
    return tuple(dict.fromkeys([*keys, *(f"email:{e}" for e in emails)]))


@dataclass(frozen=True)
class Touches:
    """What one request may read and write, as found before it is decided (``touches``)."""

    request: UpsertRequest
    company_id: str | None  # as the engine uses it (None when the company-id field is not configured)
    nodes: frozenset[str]  # its lookup keys and every record they lead to, with contacts' leads
    company_leads: frozenset[str] = field(default_factory=frozenset)  # leads carrying its company id
    person_leads: frozenset[str] = field(default_factory=frozenset)  # leads of contacts its person keys find
    person_keys: frozenset[str] = field(default_factory=frozenset)  # its user id and email keys
    keys: frozenset[str] = field(default_factory=frozenset)  # its lookup keys
    carried: frozenset[str] = field(default_factory=frozenset)  # keys an alias's contacts carry

    @property
    def records(self) -> frozenset[str]:
        """The ids it may read."""
        return self.nodes - self.keys

    @property
    def writes(self) -> frozenset[str]:
        """The existing records it may update, delete or merge (or create a contact under): any it reads."""
        return self.records

    @property
    def writes_keys(self) -> frozenset[str]:
        """The lookup keys it may give a record or take from one."""
        return self.keys | self.carried


def touches(req: UpsertRequest, view: View, memory: Store, keys: tuple[str, ...] | None = None) -> Touches:
    """What ``req`` may touch when decided on ``view``, with what the engine remembers (``memory``:
    lookup key -> ids, id -> record) for records search does not show yet. ``keys``: its
    `lookup_keys`, when the caller has them already."""
    if keys is None:
        keys = lookup_keys(req, memory.settings)
    nodes = set(keys)
    company_id = diff.company_id_of(req, memory.settings)
    company = company_key(company_id) if company_id else None
    company_leads: set[str] = set()
    person_leads: set[str] = set()
    carried: set[str] = set()
    merges = alias.is_alias(req)
    for key in keys:
        for record_id in view.ids_for(key) | set(memory.ids.ids(key)):
            nodes.add(record_id)
            if key == company:
                company_leads.add(record_id)
            record = view.contacts.get(record_id) or memory.records.get(record_id)
            if record is not None and record.get("lead_id"):
                nodes.add(record["lead_id"])
                if key != company:
                    person_leads.add(record["lead_id"])
                if merges:
                    carried.update(view.contact_keys(record))
    people = frozenset(k for k in keys if k != company)
    return Touches(
        req,
        company_id,
        frozenset(nodes),
        frozenset(company_leads),
        frozenset(person_leads),
        people,
        frozenset(keys),
        frozenset(carried) - frozenset(keys),
    )
