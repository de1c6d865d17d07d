"""`collapse` folds each run of mergeable requests at once: it must give exactly what merging them one at
a time gives (`merge` after `merge`), odd values, failing merges and every provenance field included."""

from __future__ import annotations

import copy
import pickle
from dataclasses import fields, replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from closecrm.events.collapse import Parts, collapse, collapse_key, merge, moment, parts_of
from closecrm.model import DroppedField, Flags, UpsertRequest
from tests.fuzz.budget import budget


def one_at_a_time(requests: list[UpsertRequest], by_user_id: bool) -> list[UpsertRequest]:
    """Collapsing as a chain of pairwise merges: a run ends at a new key or at a merge that fails."""
    ordered = sorted(requests, key=_time)
    out: list[UpsertRequest] = []
    runs: list[list[UpsertRequest]] = []
    last_key: Any = None
    for req in ordered:
        try:
            key = collapse_key(req, by_user_id)
            hash(key)
        except Exception:  # noqa: BLE001
            key = ("unmergeable", id(req))
        if out and key == last_key:
            try:
                out[-1] = merge(out[-1], req)
                runs[-1].append(req)
                continue
            except Exception:  # noqa: BLE001
                key = ("unmergeable", id(req))
        out.append(req)
        runs.append([req])
        last_key = key
    result = []
    for merged, run in zip(out, runs, strict=True):
        if len(run) > 1:
            parts = Parts.of([p for r in run for p in parts_of(r)])
            merged = replace(merged, parts=parts, since=run[0].since or run[0].timestamp)
        result.append(merged)
    return result


def _time(req: UpsertRequest) -> Any:
    return moment(req.timestamp)


def described(req: UpsertRequest) -> tuple[Any, ...]:
    """Every field, those that take no part in equality too (parts by the requests they hold)."""
    values = tuple(repr(getattr(req, f.name)) for f in fields(req) if f.name != "parts")
    parts = [described(p) for p in parts_of(req)] if req.parts else []
    return (values, len(req.parts), parts)


FLAGS = st.sampled_from(
    [
        Flags(),
        Flags(allow_updating_existing_contacts=False),
        Flags(allow_updating_existing_leads=False),
        Flags(allow_creating_new_contacts=False),
        Flags(allow_merging=1),  # equal to allow_merging=True, not a boolean
    ]
)
few = st.sampled_from
strings = few([None, "", "Kate", "Kate B", "acme"])
emails = st.lists(few(["kate@x.com", "KATE@x.com ", "kate@x.com", "bob@x.com", "kate@y.com", 7]), max_size=3)
phones = st.lists(few(["+1 415 555 0100", "(415) 555-0100", "+44 20 7946 0000", "nope"]), max_size=2)
urls = st.lists(few(["acme.com", "https://www.acme.com/", "b.io", ""]), max_size=2)
customs = st.dictionaries(few(["cf_a", "cf_b"]), few([1, "x", None, ""]), max_size=2)
dropped = st.lists(
    st.builds(DroppedField, few(["contact_phone", "contact_url"]), few(["invalid_phone"]), few(["m1", None])),
    max_size=2,
)
timestamps = few([None, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:01+00:00", "bad"])


@st.composite
def requests(draw: st.DrawFn, flags: Flags | None = None) -> UpsertRequest:
    req = plain_requests(draw)
    if flags is not None and draw(st.integers(0, 4)):  # mostly one person's flags: runs to merge
        req = replace(req, flags=flags)
    # Now and then a value no mapping makes, which some merges cannot take.
    odd = draw(st.integers(0, 11))
    if odd == 0:
        return replace(req, lead_custom_fields=["not", "a", "mapping"])
    if odd == 1:
        return replace(req, contact_emails=list(req.contact_emails))
    if odd == 2:
        return replace(req, mappings=(["unhashable"],))
    return req


def plain_requests(draw: st.DrawFn) -> UpsertRequest:
    return UpsertRequest(
        lead_name=draw(strings),
        lead_company_id=draw(few([None, "c1", "c1", "c1", "c2"])),
        lead_description=draw(strings),
        lead_status_id=draw(few([None, "stat_1"])),
        lead_custom_fields=draw(customs),
        contact_name=draw(strings),
        contact_emails=tuple(draw(emails)),
        contact_phones=tuple(draw(phones)),
        contact_urls=tuple(draw(urls)),
        contact_title=draw(strings),
        contact_user_id=draw(few([None, "u1", "u1", "u1", "u1", "u2"])),
        contact_custom_fields=draw(customs),
        alias_previous_id=draw(few([None, None, None, "u0"])),
        flags=draw(FLAGS),
        event_ids=tuple(draw(st.lists(few(["e1", "e2", "e3", "e4"]), max_size=2))),
        timestamp=draw(timestamps),
        since=draw(few([None, None, "2025-12-31T00:00:00Z"])),
        mappings=tuple(draw(st.lists(few(["m1", "m2"]), max_size=2))),
        dropped=tuple(draw(dropped)),
    )


@st.composite
def batches(draw: st.DrawFn, min_size: int = 0, max_size: int = 10) -> list[UpsertRequest]:
    return draw(st.lists(requests(draw(FLAGS)), min_size=min_size, max_size=max_size))


@budget(600)
@given(batches(), st.booleans())
def test_collapse_is_merging_one_at_a_time(batch: list[UpsertRequest], by_user_id: bool) -> None:
    got = collapse(batch, by_user_id)
    want = one_at_a_time(batch, by_user_id)
    assert [described(r) for r in got] == [described(r) for r in want]
    assert got == want


@budget(100)
@given(batches(min_size=1, max_size=6))
def test_collapse_of_collapsed_requests_keeps_every_part(batch: list[UpsertRequest]) -> None:
    once = collapse(batch, True)
    again = collapse(once + collapse(batch, False), True)
    assert [described(r) for r in again] == [
        described(r) for r in one_at_a_time(once + collapse(batch, False), True)
    ]


@budget(200)
@given(requests())
def test_a_request_pickles_and_copies_to_itself(req: UpsertRequest) -> None:
    for back in (
        pickle.loads(pickle.dumps(req, protocol=pickle.HIGHEST_PROTOCOL)),
        copy.copy(req),
        copy.deepcopy(req),
    ):
        assert type(back) is UpsertRequest
        assert vars(back) == vars(req) and list(vars(back)) == list(vars(req))
        assert repr(back) == repr(req) and back == req
        assert type(back.flags) is Flags and vars(back.flags) == vars(req.flags)
        assert [type(v) for v in vars(back.flags).values()] == [type(v) for v in vars(req.flags).values()]
