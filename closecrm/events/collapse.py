"""Collapse one person's requests into fewer, without changing what Close ends up holding.

Two requests merge only when they would look up the same records under the same flags
(`collapse_key`) and no request with another key falls between them in timestamp order:
a person who moves company must still be applied as "old company, then new company".

Collapsing sees one person only. Another person's request can fall between two merged ones and
meet the same records (a visitor renaming the contact by its email); so a merged request keeps
the requests it was made of (`Parts`) and the time it spans (``since`` .. ``timestamp``), and the
engine applies them one by one where that happens (closecrm/engine/ordering/spans.py).
"""

from __future__ import annotations

import operator
import pickle
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from closecrm.events.normalize import email_key, phone_key, url_key
from closecrm.events.parse import instant
from closecrm.model import Flags, UpsertRequest

CollapseKey = tuple[Any, ...]

_SCALARS = (
    "lead_name",
    "lead_company_id",
    "lead_description",
    "lead_status_id",
    "contact_name",
    "contact_title",
    "contact_user_id",
)


# What a request writes onto a contact, and onto a lead, besides the identity in `collapse_key`.
_CONTACT_VALUES = (
    "contact_name",
    "contact_title",
    "contact_emails",
    "contact_phones",
    "contact_urls",
    "contact_custom_fields",
)
_LEAD_VALUES = ("lead_name", "lead_description", "lead_status_id", "lead_custom_fields")


def creates_anew(req: UpsertRequest) -> bool:
    """Contact fields but neither user id nor email: nothing can find the contact it creates, so
    each time it is applied it creates another. Never merged, never suppressed as a repeat."""
    return req.contact_user_id is None and not req.contact_email and req.has_contact_fields()


def found_by_user_id_after(req: UpsertRequest) -> bool:
    """Once ``req`` is applied, does Close hold its user id on every record a later request of the
    person (same company id, same flags) would look up? Then that request finds them by user id and
    its email plays no part in the lookup.

    Applying it leaves a contact carrying the user id wherever the person is looked up: the engine
    finds it by user id, or stamps the user id onto the contacts it finds by email, or creates
    one, under the company's lead when there is one. Each of those writes can be forbidden: stamping
    is an update of an existing contact, and creating may need a new lead, a new contact, or a
    duplicate of the person under another lead. Only with all four allowed is the user id sure to be
    there afterwards. Callers also need the destination to find contacts by user id at all.
    """
    flags = req.flags
    return bool(
        req.contact_user_id
        and flags.allow_updating_existing_contacts
        and flags.allow_creating_new_contacts
        and flags.allow_creating_new_leads
        and flags.allow_creating_duplicate_contacts
    )


# In place of the lookup email, in the key of a request `found_by_user_id_after` (never an email key).
_ANY_EMAIL = ("any lookup email",)


def collapse_key(req: UpsertRequest, by_user_id: bool = False) -> CollapseKey:
    """What decides which records a request looks up: company id, user id, lookup email, flags.

    The lookup email is part of the key because when no contact has the user id yet, the engine
    falls back to the email: ``(U, a)`` then ``(U, b)`` can end differently from ``(U, [a, b])``
    (e.g. when creating contacts is not allowed). Not so when ``by_user_id`` (Close finds contacts
    by user id: its custom field is configured) and the request is `found_by_user_id_after`: the
    first request of a run leaves the user id on what the later ones look up, so they merge whatever
    their emails, and the merged request keeps the first one's lookup email (emails accumulate in
    first-seen order). Whether there is a lookup email at all stays in the key: a first request
    without one must not be merged into one that looks up by a later request's email.

    A request that `creates_anew` is never merged (its key carries its own ids and content), nor is
    an alias: it links two people, and each of them must be applied on the right side of it.
    """
    email = _key(email_key, req.contact_email) if req.contact_email else None
    if isinstance(email, str) and by_user_id and found_by_user_id_after(req):
        email = _ANY_EMAIL
    alone = creates_anew(req) or req.alias_previous_id is not None
    unidentified = (req.event_ids, req.fingerprint()) if alone else None
    return (req.lead_company_id, req.contact_user_id, email, req.flags, unidentified)


def _key(key: Callable[[str], str], value: Any) -> Any:
    """``key(value)``, or for a value it cannot take (not text) the value itself, tagged apart."""
    try:
        return key(value)
    except Exception:  # noqa: BLE001 - a request is never refused here; odd values compare as themselves
        return ("unkeyed", type(value).__name__, repr(value))


def _accumulate(first: tuple[str, ...], then: tuple[str, ...], key: Callable[[str], str]) -> tuple[str, ...]:
    return _accumulate_all([first, then], key)


def _accumulate_all(groups: list[tuple[str, ...]], key: Callable[[str], str]) -> tuple[str, ...]:
    """``_accumulate`` of each group onto the ones before it, in one pass."""
    seen = {_key(key, value) for value in groups[0]}
    out = list(groups[0])
    for group in groups[1:]:
        for value in group:
            k = _key(key, value)
            if k not in seen:
                seen.add(k)
                out.append(value)
    return tuple(out)


def merge(earlier: UpsertRequest, later: UpsertRequest) -> UpsertRequest:
    """One request with the effect of applying ``earlier`` then ``later``.

    Callers merge only requests with equal `collapse_key`; ``later`` keeps its flags. When those
    forbid updating existing contacts (leads), ``earlier``'s contact (lead) values stand: it may
    create the record, which ``later`` could then not have changed.
    """
    merged = _merged(earlier, later)
    kept: list[str] = []
    if not later.flags.allow_updating_existing_contacts:
        kept += _CONTACT_VALUES
    if not later.flags.allow_updating_existing_leads:
        kept += _LEAD_VALUES
    return replace(merged, **{name: getattr(earlier, name) for name in kept}) if kept else merged


def _merged(earlier: UpsertRequest, later: UpsertRequest) -> UpsertRequest:
    scalars: dict[str, Any] = {}
    for name in _SCALARS:
        value = getattr(later, name)
        scalars[name] = value if value is not None else getattr(earlier, name)
    for name in ("lead_custom_fields", "contact_custom_fields"):
        before, after = getattr(earlier, name), getattr(later, name)
        if not isinstance(before, Mapping) or not isinstance(after, Mapping):
            raise TypeError(f"{name} is not a mapping")
        scalars[name] = {**before, **after}
    return replace(
        later,
        **scalars,
        contact_emails=_accumulate(earlier.contact_emails, later.contact_emails, email_key),
        contact_phones=_accumulate(earlier.contact_phones, later.contact_phones, phone_key),
        contact_urls=_accumulate(earlier.contact_urls, later.contact_urls, url_key),
        event_ids=_accumulate(earlier.event_ids, later.event_ids, str),
        timestamp=later.timestamp if later.timestamp is not None else earlier.timestamp,
        **later.provenance_after(earlier),
    )


_UNTIMED = (0, datetime.min.replace(tzinfo=UTC))
Moment = tuple[int, datetime]


def moment(timestamp: str | None) -> Moment:
    """Sort key: a timestamp's moment in UTC. Text would misorder offsets (+05:00 vs Z), fractions of
    different lengths and short years; no usable timestamp comes first."""
    at = instant(timestamp)
    return _UNTIMED if at is None else (1, at)


def _time(req: UpsertRequest) -> Moment:
    return moment(req.timestamp)


def span(req: UpsertRequest) -> tuple[Moment, Moment]:
    """The first and the last moment of the events a request stands for (equal unless merged)."""
    last = moment(req.timestamp)
    return (moment(req.since), last) if req.parts else (last, last)


class Parts:
    """The requests a collapsed request was merged from, in event order, kept compressed.

    Only the engine reads them, and only for a request another person's request falls between;
    every collapsed request carries them through the writer's buffer, where a chatty person's twenty
    near-identical requests compress to little more than one. What the engine asks of every collapsed
    request, the lead values its parts ask for (`lead_values`), is kept beside them, uncompressed.
    """

    __slots__ = ("_blob", "_count", "_lead_values")

    def __init__(self, blob: bytes, count: int, lead_values: frozenset[tuple[Any, ...]] | None = None) -> None:
        self._blob = blob
        self._count = count
        self._lead_values = lead_values

    @classmethod
    def of(cls, requests: Sequence[UpsertRequest]) -> Parts:
        blob = zlib.compress(pickle.dumps(tuple(requests), protocol=pickle.HIGHEST_PROTOCOL), 1)
        try:
            values: frozenset[tuple[Any, ...]] | None = frozenset(map(lead_values_of, requests))
        except Exception:  # noqa: BLE001 - an odd value fails where the engine reads it, as unpacked parts would
            values = None
        return cls(blob, len(requests), values)

    def lead_values(self) -> frozenset[tuple[Any, ...]]:
        """`lead_values_of` each part (computed from the parts when not kept)."""
        if self._lead_values is None:
            return frozenset(map(lead_values_of, self.requests()))
        return self._lead_values

    def requests(self) -> tuple[UpsertRequest, ...]:
        return pickle.loads(zlib.decompress(self._blob))  # noqa: S301 - written by `of` in this process or its peer

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 1

    def __repr__(self) -> str:
        return f"Parts({self._count})"

    def __reduce__(self):  # noqa: ANN204
        return (Parts, (self._blob, self._count, self._lead_values))


def lead_values_of(req: UpsertRequest) -> tuple[Any, ...]:
    """The values a request asks its lead to hold (name, description, status, custom fields), comparable."""
    fields = req.lead_custom_fields
    custom = () if type(fields) is dict and not fields else tuple(sorted((str(k), repr(v)) for k, v in fields.items()))
    return (req.lead_name, req.lead_description, req.lead_status_id, custom)


def lead_values(req: UpsertRequest) -> frozenset[tuple[Any, ...]]:
    """The lead values (`lead_values_of`) of the unmerged requests ``req`` stands for."""
    return req.parts.lead_values() if req.parts else frozenset((lead_values_of(req),))


def parts_of(req: UpsertRequest) -> tuple[UpsertRequest, ...]:
    """The unmerged requests ``req`` stands for, in event order (itself when it was not merged)."""
    return req.parts.requests() if req.parts else (req,)


def _with_parts(merged: UpsertRequest, run: list[UpsertRequest]) -> UpsertRequest:
    if len(run) == 1:
        return merged
    parts = [p for r in run for p in parts_of(r)]
    return replace(merged, parts=Parts.of(parts), since=run[0].since or run[0].timestamp)


def _collapse_key_or_own(req: UpsertRequest, by_user_id: bool) -> CollapseKey:
    """`collapse_key`, or a key no other request has when the request's values defeat it."""
    try:
        key = collapse_key(req, by_user_id)
        hash(key)
    except Exception:  # noqa: BLE001 - such a request is applied on its own, not refused
        return ("unmergeable", id(req))
    return key


def collapse(requests: Iterable[UpsertRequest], by_user_id: bool = False) -> list[UpsertRequest]:
    """Sort by (timestamp, arrival order) and merge each run of consecutive equal-key requests.

    ``by_user_id``: the destination finds contacts by user id (its user-id custom field is
    configured), which lets a person's requests with different emails merge (`collapse_key`).

    Never raises on a request's values: a request that cannot be merged is kept as it is, which
    leaves the same result as merging (the requests are applied one after the other in order).
    """
    ordered = sorted(requests, key=_time)  # stable: ties keep arrival order
    keys = [_collapse_key_or_own(req, by_user_id) for req in ordered]
    runs = _runs(ordered, keys)
    if all(len(run) == 1 or all(map(_foldable, run)) for run in runs):
        try:
            return [run[0] if len(run) == 1 else _folded(run) for run in runs]
        except Exception:  # noqa: BLE001, S110 - some merge would fail too: merged one at a time below
            pass
    out: list[UpsertRequest] = []
    runs = []
    last_key: CollapseKey | None = None
    for req, key in zip(ordered, keys, strict=True):
        if out and key == last_key:
            try:
                out[-1] = merge(out[-1], req)
                runs[-1].append(req)
                continue
            except Exception:  # noqa: BLE001 - unmergeable: applied on its own, after the run
                key = ("unmergeable", id(req))
        out.append(req)
        runs.append([req])
        last_key = key
    return [_with_parts(merged, run) for merged, run in zip(out, runs, strict=True)]


def _runs(ordered: list[UpsertRequest], keys: list[CollapseKey]) -> list[list[UpsertRequest]]:
    """The runs of consecutive requests whose key equals their run's first one, as `collapse` merges
    them when every merge succeeds."""
    runs: list[list[UpsertRequest]] = []
    last_key: CollapseKey | None = None
    for req, key in zip(ordered, keys, strict=True):
        if runs and key == last_key:
            runs[-1].append(req)
        else:
            runs.append([req])
            last_key = key
    return runs


_LIST_KEYS = (
    ("contact_emails", email_key),
    ("contact_phones", phone_key),
    ("contact_urls", url_key),
    ("event_ids", str),
)
_tuple_values = operator.itemgetter(
    "contact_emails", "contact_phones", "contact_urls", "event_ids", "mappings", "dropped"
)
_custom_values = operator.itemgetter("lead_custom_fields", "contact_custom_fields")
_TUPLE, _DICT = {tuple}, {dict}


def _foldable(req: UpsertRequest) -> bool:
    """Whether `_folded` gives what merging ``req`` one at a time gives: a plain request, whose flags
    are booleans (equal flags then allow the same), custom fields dicts and lists tuples. `_folded`
    then raises where some `merge` of the run would (the same key and hash on the same values)."""
    return (
        type(req) is UpsertRequest
        and type(req.flags) is Flags
        and req.flags.plain()
        and set(map(type, _tuple_values(req.__dict__))) == _TUPLE
        and set(map(type, _custom_values(req.__dict__))) == _DICT
    )


def _last_given(run: list[UpsertRequest], name: str) -> Any:
    """The last value of ``name`` in ``run`` that is not None (None when none is given)."""
    for req in reversed(run):
        value = getattr(req, name)
        if value is not None:
            return value
    return None


def _folded(run: list[UpsertRequest]) -> UpsertRequest:
    """``merge(...merge(merge(run[0], run[1]), run[2])..., run[-1])``, built once, with its parts and
    since (`_with_parts`): each value is the last one given, lists and custom fields accumulate over
    the run, and values the run's flags forbid updating are the first request's."""
    first, last = run[0], run[-1]
    values: dict[str, Any] = {name: _last_given(run, name) for name in _SCALARS}
    for name in ("lead_custom_fields", "contact_custom_fields"):
        merged: dict[str, Any] = {}
        for req in run:
            merged.update(getattr(req, name))
        values[name] = merged
    for name, key in _LIST_KEYS:
        values[name] = _accumulate_all([getattr(req, name) for req in run], key)
    flags = last.flags
    if not flags.allow_updating_existing_contacts:
        values.update((name, getattr(first, name)) for name in _CONTACT_VALUES)
    if not flags.allow_updating_existing_leads:
        values.update((name, getattr(first, name)) for name in _LEAD_VALUES)
    return UpsertRequest(
        **values,
        alias_previous_id=last.alias_previous_id,
        flags=flags,
        timestamp=_last_given(run, "timestamp"),
        since=first.since or first.timestamp,
        parts=Parts.of([p for r in run for p in parts_of(r)]),
        mappings=tuple(dict.fromkeys(name for req in run for name in req.mappings)),
        dropped=tuple(dict.fromkeys(dropped for req in run for dropped in req.dropped)),
    )
