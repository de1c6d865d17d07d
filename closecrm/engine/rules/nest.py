"""Nested creation: the new people of a new lead go into its one ``POST /lead/``.

Close creates a lead with all its contacts nested in one call. When a request of a group is about
to create a lead, the requests that follow it in the group (its next units, in order) are offered to
it (``Offer``). It takes the longest run of them, up to ``MAX_NESTED_CONTACTS``, that applied one at
a time right after it would each certainly find that new lead by its company id, have nothing to
change on it, match no contact anywhere, and create exactly one contact under it (``nestable``):

- not an alias; the same company id as the new lead; contact fields and a lookup key (a user id or
  an email: a contact without one could not be found again after a lost answer);
- new contacts allowed; no contact in the view matches its user id or email, and it shares no user
  id or email with the new lead's other contacts (so nothing else could match it either);
- every lead value it carries is already the new lead's (``diff.lead_update`` is empty).

The first request that does not qualify ends the run: what follows it may depend on it; so does a
value the engine cannot handle or the client cannot send, which then fails its own request. Each taken
request ends as it would have one at a time (``created``, branch ``lead_by_company_id``, the new
lead and its own contact, its contact's create changes), with no call of its own; its changes say
``nested``. When the create's answer is lost and the lead turns up, or Close refuses the create,
the requests taken go back to being applied one at a time (decide.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from closecrm.engine import diff
from closecrm.engine.rules import alias
from closecrm.engine.view import View
from closecrm.model import Outcome, Settings, UpsertRequest

Record = dict[str, Any]

# Contacts nested besides the creating request's own. Close documents no limit. 25 holds every
# company of W1 and W2 (a lookup batch rarely has more than 10 new people of one), keeps a create's
# body under the size of one of the job's search bodies (about 4 KB for W2's contacts, 20 KB for a
# search of 100 values), and bounds what one refused create sends again one at a time (figures
# in bench/RESULTS.md, "nested creation"). A lost answer costs the same at any cap.
MAX_NESTED_CONTACTS = 25


@dataclass(frozen=True)
class Follower:
    """A request that follows the creating one in its group, and where it stands in the engine's input."""

    req: UpsertRequest
    position: int


@dataclass
class Offer:
    """What a request that creates a lead may nest, and what became of what it took.

    ``following`` lists the followers; it is called only when a lead is created, as most requests
    create none and every request is offered its followers.
    ``outcomes``: those of the followers taken, in order (the scheduler applies none of them again).
    ``made``: follower index -> the contact body a create whose answer was lost made for it; it is
    applied one at a time, and counts that contact as its creation.
    """

    following: Callable[[], Sequence[Follower]]
    outcomes: list[Outcome] = field(default_factory=list)
    made: dict[int, Record] = field(default_factory=dict)

    @cached_property
    def followers(self) -> Sequence[Follower]:
        return self.following()


@dataclass(frozen=True)
class Nested:
    """A follower taken: its contact's body in the new lead, and the lookup keys that body gives it."""

    follower: Follower
    body: Record
    keys: frozenset[str]


def nestable(
    lead_body: Record, company_id: str, followers: Sequence[Follower], view: View, settings: Settings
) -> list[Nested]:
    """The longest run of ``followers`` (at most ``MAX_NESTED_CONTACTS``) a new lead with ``lead_body``
    and company ``company_id`` can carry: see the module's docstring."""
    lead = {k: v for k, v in lead_body.items() if k != "contacts"}
    taken: set[str] = set()
    for contact in lead_body.get("contacts") or []:
        taken |= set(view.contact_keys(contact))
    out: list[Nested] = []
    for follower in followers[:MAX_NESTED_CONTACTS]:
        try:
            found = _nested(lead, company_id, follower, view, settings)
        except Exception:  # noqa: BLE001 - a value the engine cannot handle fails its own request, alone
            break
        if found is None or found.keys & taken:
            break
        taken |= found.keys
        out.append(found)
    return out


def _nested(lead: Record, company_id: str, follower: Follower, view: View, settings: Settings) -> Nested | None:
    """The follower as a contact of the new lead, or None when one at a time might do otherwise."""
    req = follower.req
    user_id = diff.user_id_of(req, settings)
    if (
        alias.is_alias(req)
        or diff.company_id_of(req, settings) != company_id
        or not diff.has_contact_fields(req, settings)
        or not (user_id or req.contact_email)
        or not req.flags.allow_creating_new_contacts
        or diff.lead_update(lead, req, settings, with_company_id=False)
        or view.match_contacts(user_id, req.contact_email)
    ):
        return None
    body = diff.new_contact(req, settings)
    # A value the client cannot send (NaN, a non-JSON type) must fail its own request, not the lead's.
    json.dumps(body, allow_nan=False)
    keys = frozenset(view.contact_keys(body))
    return Nested(follower, body, keys) if keys else None


def assign(contacts: Sequence[Record], nested: Sequence[Nested], view: View) -> list[Record | None]:
    """Each nested follower's contact among a new lead's ``contacts``: the one carrying its keys (the
    keys of nested contacts are disjoint); None when Close returned none."""
    by_key: dict[str, Record] = {}
    for contact in contacts:
        for key in view.contact_keys(contact):
            by_key.setdefault(key, contact)
    return [next((by_key[k] for k in sorted(n.keys) if k in by_key), None) for n in nested]
