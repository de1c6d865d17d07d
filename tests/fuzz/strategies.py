"""Hostile input for the fuzz suite: arbitrary JSON, deep nesting, and odd emails, phones, URLs and times."""

from __future__ import annotations

import json
import sys
from typing import Any

from hypothesis import strategies as st

from closecrm.events.parse import EVENT_TYPES

# Every code point, lone surrogates included (valid in JSON text as \ud800 escapes).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
text = st.text(ANY_CHAR, max_size=40)
small_text = st.text(ANY_CHAR, max_size=8)

# Numbers JSON can carry but that overflow or lose meaning: 400-digit integers, 1e999, NaN.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e308, 2**63, -(2**63) - 1, 10**20]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested hundreds to thousands of levels: a kilobyte that can blow the stack."""
    levels = draw(st.sampled_from([65, 200, 500, 1000, 3000]))
    value: Any = draw(scalars)
    for i in range(levels):
        value = [value] if (i % 2 or draw(st.booleans())) else {"a": value}
    return value


hostile_values = st.one_of(json_values, deep(), st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e"]))

local_parts = st.sampled_from(["kate", "\u212aate", "KATE", "k\u0130te", "a+b", "", " kate ", "x" * 70, "é"])
domains = st.sampled_from(["example.com", "EXAMPLE.com", "xn--bcher-kva.example", "example", "[127.0.0.1]", "ex ample.com", ""])
emails = st.one_of(st.builds(lambda a, b: f"{a}@{b}", local_parts, domains), text)
phones = st.one_of(
    st.sampled_from(["+1 415 555 0100", "415-555-0100", "+44 20 7946 0958", "+999", "0", "+" + "9" * 40, "tel:+1"]),
    st.text(st.sampled_from("0123456789+-() x#*ext."), max_size=30),
    text,
)
urls = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}{host}{port}{path}",
        st.sampled_from(["http://", "https://", "", "javascript:", "data:", "ftp://", "HTTP://", "//"]),
        st.sampled_from(["example.com", "www.Example.com", "", "[::1]", "[::1", "ex ample.com", "bücher.example", "a" * 300]),
        st.sampled_from(["", ":80", ":abc", ":99999", ":-1", ":", ":0"]),
        st.sampled_from(["", "/", "/a?b=c", "/%zz", "/\x00", "alert(1)", "/\u202e", "#frag"]),
    ),
    text,
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.datetimes().map(lambda d: d.isoformat() + "+05:30"),
    st.sampled_from(
        ["0999-01-01T00:00:00Z", "2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.25Z", "2026-13-01T00:00:00Z",
         "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z", "-0001-01-01T00:00:00Z", "1e10", "", "now"]
    ),
    numbers,
    text,
)
ids = st.one_of(st.sampled_from(["u_kate", "u_mallory", "u1", "", " ", "\ud800"]), text, numbers, st.none())


def dumps(obj: Any) -> str:
    """JSON text of ``obj``, deep nesting included (the encoder needs more stack than the default)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return json.dumps(obj)  # ASCII: lone surrogates become \\udXXX escapes, as in the wild
    finally:
        sys.setrecursionlimit(limit)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A Segment-shaped object where any field may hold anything."""
    field = st.one_of(st.none(), hostile_values)
    traits: dict[str, Any] = {
        "email": draw(st.one_of(st.none(), emails, hostile_values)),
        "phone": draw(st.one_of(st.none(), phones, hostile_values)),
        "website": draw(st.one_of(st.none(), urls, hostile_values)),
        "name": draw(field),
        "title": draw(field),
        "company": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({"id": ids, "name": st.one_of(st.none(), hostile_values)}),
                hostile_values,
            )
        ),
    }
    traits.update(draw(st.dictionaries(small_text, hostile_values, max_size=3)))
    event: dict[str, Any] = {
        "type": draw(st.one_of(st.sampled_from(sorted(EVENT_TYPES)), st.sampled_from(["IDENTIFY", " group "]), hostile_values)),
        "messageId": draw(st.one_of(st.none(), ids, hostile_values)),
        "userId": draw(ids),
        "anonymousId": draw(st.one_of(st.none(), ids)),
        "timestamp": draw(st.one_of(st.none(), timestamps)),
        "traits": draw(st.one_of(st.just(traits), st.just(traits), hostile_values, st.just(dumps(traits)))),
        "context": draw(st.one_of(st.none(), st.fixed_dictionaries({"traits": st.one_of(st.just(traits), hostile_values)}))),
    }
    if draw(st.booleans()):
        event.update(draw(st.dictionaries(small_text, hostile_values, max_size=3)))
    return {k: v for k, v in event.items() if v is not None or draw(st.booleans())}


def as_wire(obj: Any, form: str) -> Any:
    """One object as a source would deliver it: a dict (Avro/Parquet rows), JSON text, or bytes."""
    if form == "dict":
        return obj
    blob = dumps(obj)
    return blob if form == "text" else blob.encode("ascii")


raw_bytes = st.one_of(st.binary(max_size=200), st.sampled_from([b"\xff\xfe{", b'{"type":"identify"\x00}', b"[" * 5000, b"{}" * 3]))


@st.composite
def wire_events(draw: st.DrawFn) -> Any:
    """What a source hands ParseEvents: mostly hostile events, sometimes plain garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(raw_bytes, text))
    return as_wire(draw(events()), draw(st.sampled_from(["dict", "text", "bytes"])))
