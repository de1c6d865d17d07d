"""Collapsed requests among other people's: batches cut around their spans, and parts applied in turn.

A collapsed request stands for one person's events from ``since`` to ``timestamp``. Another
person's request can fall inside that span and meet the same records: applied one at a time, the
collapsed request's early events come before it and its late events after it. The engine keeps that
order in two steps:

- `batches` never cuts a batch where a collapsed request's span would fall on both sides, so every
  request inside the span is looked up with it and can share its group;
- `units` turns a group's members into the sequence to apply: a collapsed request is split back
  into its parts (closecrm.events.collapse.Parts), placed among the others by event time, when a member
  inside its span may touch what it touches (closecrm.engine.rules.touches). Members that commute
  (`independent`) are not split: people of one company share its lead, and splitting them all
  would undo collapsing.

The outcomes of one request's parts are `combine`d into the one outcome the request ends with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from closecrm.engine.rules.touches import Touches
from closecrm.engine.view import company_key
from closecrm.events.collapse import Moment, moment, parts_of, span
from closecrm.events.collapse import lead_values as request_lead_values
from closecrm.model import Outcome, UpsertRequest

T = TypeVar("T")

_BEFORE_ALL: Moment = (-1, datetime.min.replace(tzinfo=UTC))
_AFTER_ALL: Moment = (2, datetime.max.replace(tzinfo=UTC))
# Pairs of a group checked for commuting before the rest are split without checking: a group of
# thousands of overlapping members (one huge lead) must not cost a quadratic pause.
MAX_PAIRS_CHECKED = 200_000


def batches(
    items: Iterable[T], size: int | Sequence[int], request: Callable[[T], UpsertRequest]
) -> Iterator[list[T]]:
    """``items`` in order, cut into batches of about ``size``: longer where a cut would split a span.
    (Several sizes are taken in turn, one per batch.)

    A cut between two items is safe unless a collapsed request on one side spans a moment of an
    item on the other: a collapsed request after the cut that began before an item before it ended,
    or an item after the cut that began before a collapsed request before it ended.
    """
    items = list(items)
    sizes = [max(1, x) for x in ([size] if isinstance(size, int) else size)] or [1]
    spans = [span(request(x)) for x in items]
    merged = [bool(request(x).parts) for x in items]
    n = len(items)
    first_after = [_AFTER_ALL] * (n + 1)  # the earliest first moment of the items from i on
    merged_first_after = [_AFTER_ALL] * (n + 1)  # the same among collapsed requests
    for i in range(n - 1, -1, -1):
        first_after[i] = min(first_after[i + 1], spans[i][0])
        merged_first_after[i] = (
            min(merged_first_after[i + 1], spans[i][0]) if merged[i] else merged_first_after[i + 1]
        )
    start = cuts = 0
    last_before = merged_last_before = _BEFORE_ALL
    for i in range(n):
        safe = merged_first_after[i] >= last_before and first_after[i] >= merged_last_before
        if i - start >= sizes[cuts % len(sizes)] and safe:
            yield items[start:i]
            start, cuts = i, cuts + 1
        last_before = max(last_before, spans[i][1])
        if merged[i]:
            merged_last_before = max(merged_last_before, spans[i][1])
    if start < n:
        yield items[start:]


def independent(
    a: Touches, b: Touches, crowded: frozenset[str], lead_values: Callable[[Touches], frozenset[tuple[Any, ...]]]
) -> bool:
    """Does applying the two in either order leave Close the same? False when unsure.

    Nothing shared: neither reads what the other writes (every key it writes is one it reads, or,
    for an alias, carried by a record it reads). Sharing only their company's lead: both then find
    or create that one lead with the same values and flags, and their contacts are not the same (no
    key in common) and do not live under another lead a company-less request could adopt. While no
    lead has the company yet, whoever comes first creates or adopts it, so neither person may have
    contacts elsewhere, now or made by another member of the group (``crowded``: person keys that
    members of different companies have). ``lead_values``: the lead values a member's parts ask for.
    """
    shared = a.nodes & b.nodes
    if not shared:
        return True
    company = a.company_id
    if not company or company != b.company_id or a.request.flags != b.request.flags:
        return False
    lead = {company_key(company)} | a.company_leads | b.company_leads
    if not shared <= lead:
        return False
    if not (a.person_leads | b.person_leads) <= lead:
        return False
    if len(lead) == 1 and (a.person_keys | b.person_keys) & crowded:
        return False
    return len(lead_values(a) | lead_values(b)) == 1


def units(members: Sequence[Touches]) -> list[tuple[int, UpsertRequest]]:
    """The (member, request) sequence to apply: members in order, unless one's span holds another
    member it does not commute with; then both go part by part, everything sorted by event time."""
    if not any(m.request.parts for m in members):
        return [(k, m.request) for k, m in enumerate(members)]  # nothing collapsed: members in order
    spans = [span(m.request) for m in members]
    split = _to_split(members, spans)
    if not split:
        return [(k, m.request) for k, m in enumerate(members)]
    seq: list[tuple[Moment, int, int, UpsertRequest]] = []
    for k, m in enumerate(members):
        if k in split:
            seq.extend((moment(p.timestamp), k, n, p) for n, p in enumerate(parts_of(m.request)))
        else:
            seq.append((spans[k][1], k, 0, m.request))
    seq.sort(key=lambda u: (u[0], u[1], u[2]))
    return [(k, req) for _, k, _, req in seq]


def _to_split(members: Sequence[Touches], spans: list[tuple[Moment, Moment]]) -> set[int]:
    """Collapsed members whose span overlaps a member they may not commute with (and that member)."""
    # Person keys that members of different companies (or none) have: one of them may give the
    # person a contact under another lead, which a request for a company nobody has would adopt.
    companies: dict[str, set[str | None]] = {}
    for m in members:
        for key in m.person_keys:
            companies.setdefault(key, set()).add(m.company_id)
    frozen_crowded = frozenset(k for k, c in companies.items() if len(c) > 1)
    values: dict[int, frozenset[tuple[Any, ...]]] = {}

    def lead_values(m: Touches) -> frozenset[tuple[Any, ...]]:
        """The lead values each of its parts asks for (kept with the parts: none is unpacked; read once)."""
        found = values.get(id(m))
        if found is None:
            values[id(m)] = found = request_lead_values(m.request)
        return found

    by_start = sorted(range(len(members)), key=lambda k: spans[k][0])
    split: set[int] = set()
    open_: list[int] = []  # members whose span has begun and not ended, in start order
    checked = 0
    for k in by_start:
        first = spans[k][0]
        open_ = [j for j in open_ if spans[j][1] > first]
        for j in open_:
            if not (members[j].request.parts or members[k].request.parts):
                continue  # two single events keep their order anyway
            checked += 1
            if checked > MAX_PAIRS_CHECKED:  # too many to compare: every collapsed member goes part by part
                return {x for x, m in enumerate(members) if m.request.parts}
            if not independent(members[j], members[k], frozen_crowded, lead_values):
                split.update(x for x in (j, k) if members[x].request.parts)
        open_.append(k)
    return split


_RANK = {"failed": 4, "created": 3, "updated": 2, "skipped": 1, "unchanged": 0}


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """One request's outcome from its parts': the weightiest kind (failed, created, updated, skipped,
    unchanged; the first part with it gives reason and branch), every record touched, calls summed."""
    chosen = max(outcomes, key=lambda o: _RANK.get(o.kind, 0))  # max keeps the first of equals
    return Outcome(
        kind=chosen.kind,
        reason=chosen.reason,
        branch=chosen.branch,
        lead_ids=tuple(dict.fromkeys(i for o in outcomes for i in o.lead_ids)),
        contact_ids=tuple(dict.fromkeys(i for o in outcomes for i in o.contact_ids)),
        http_status=chosen.http_status,
        error_body=chosen.error_body,
        calls=sum(o.calls for o in outcomes),
        attempts=max(o.attempts for o in outcomes),
        changes=tuple(c for o in outcomes for c in o.changes),
    )
