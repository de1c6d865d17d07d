"""Evaluate a Close advanced-filtering body (`POST /data/search/`) over the simulator's search index."""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import re
import time as clock
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import cmp_to_key
from typing import Any

from closesim.errors import ValidationFailed
from closesim.text import fold, term_key

Doc = dict[str, Any]
Predicate = Callable[[str, Doc, "Related"], bool]

MAX_LIMIT = 200
DEFAULT_LIMIT = 10
BODY_KEYS = {"query", "_limit", "cursor", "sort", "_fields", "results_limit", "include_counts"}

REGULAR_FIELDS: dict[str, set[str]] = {
    "lead": {
        "id",
        "name",
        "display_name",
        "description",
        "url",
        "status_id",
        "status_label",
        "date_created",
        "date_updated",
    },
    "contact": {"id", "lead_id", "name", "display_name", "title", "date_created", "date_updated"},
    "contact_email": {"email", "type"},
    "contact_phone": {"phone", "type"},
    "contact_url": {"url", "type"},
}
# Regular fields a search may sort on: the dates the Close documentation's sorting and deep-paging
# advice names, and the names its examples sort on. Sorting on anything else (`id`, a custom
# field) is refused, as undocumented.
SORTABLE = {"date_created", "date_updated", "name", "display_name"}
# Condition types and text modes documented by Close or used by public code written against it.
TEXT_MODES = ("full_words", "phrase", "exact_value")
RELATIONS = {
    ("lead", "contact"),
    ("contact", "lead"),
    ("contact", "contact_email"),
    ("contact", "contact_phone"),
    ("contact", "contact_url"),
}
RESULT_FIELDS: dict[str, set[str]] = {
    "lead": REGULAR_FIELDS["lead"] | {"contact_ids", "organization_id", "html_url"},
    "contact": REGULAR_FIELDS["contact"] | {"emails", "phones", "urls", "organization_id"},
}
_WORD = re.compile(r"\w+")


class Related:
    """Lazily built lookups from a document to its related objects."""

    def __init__(self, leads: dict[str, Doc], contacts: dict[str, Doc]):
        self.leads = leads
        self.contacts = contacts
        self._by_lead: dict[str, list[Doc]] | None = None

    def of(self, object_type: str, doc: Doc, related_type: str) -> list[tuple[str, Doc]]:
        if object_type == "lead" and related_type == "contact":
            if self._by_lead is None:
                self._by_lead = {}
                for contact in self.contacts.values():
                    self._by_lead.setdefault(contact["lead_id"], []).append(contact)
            return [("contact", c) for c in self._by_lead.get(doc["id"], [])]
        if related_type == "lead":
            lead = self.leads.get(doc.get("lead_id", ""))
            return [("lead", lead)] if lead else []
        key = {"contact_email": "emails", "contact_phone": "phones", "contact_url": "urls"}[related_type]
        return [(related_type, item) for item in doc.get(key) or []]


RELATED_TERMS = {"emails": ("contact_email", "email"), "phones": ("contact_phone", "phone"), "urls": ("contact_url", "url")}


def _doc_terms(doc: Doc) -> set[tuple[str, str]]:
    """The (key, term) pairs under which a document is indexed: ids, custom fields, and a contact's
    emails, phones and urls (as ``contact_email.email`` etc.), each term as a term condition compares it."""
    out: set[tuple[str, str]] = set()
    for key, value in doc.items():
        if key in RELATED_TERMS:
            related_type, field = RELATED_TERMS[key]
            for item in value or ():
                if item.get(field) not in (None, ""):
                    out.add((f"{related_type}.{field}", fold(item[field])))
        elif key in ("id", "lead_id") or key.startswith("custom."):
            for v in value if isinstance(value, list) else [value]:
                if v is not None and v != "":
                    out.add((key, fold(v)))
    return out


class TermIndex:
    """Document ids by indexed term, per object type: lets a search with term conditions look at the few
    documents that can match instead of every one (a first sync's lookups scanned 50,000 contacts each).
    Terms are kept case-folded, so the candidates of a case-sensitive term or of an exact text value
    are a superset; they only narrow the scan: every candidate is still checked by the full predicate."""

    def __init__(self) -> None:
        self._ids: dict[str, dict[tuple[str, str], set[str]]] = {"lead": {}, "contact": {}}

    def put(self, object_type: str, doc_id: str, old: Doc | None, new: Doc | None) -> None:
        table = self._ids[object_type]
        before = _doc_terms(old) if old else set()
        after = _doc_terms(new) if new else set()
        for term in before - after:
            ids = table.get(term)
            if ids is not None:
                ids.discard(doc_id)
                if not ids:
                    del table[term]
        for term in after - before:
            table.setdefault(term, set()).add(doc_id)

    def ids(self, object_type: str, key: str, term: str) -> set[str]:
        return self._ids[object_type].get((key, term), set())


def _combined(kind: str, parts: list[set[str] | None]) -> set[str] | None:
    """Candidate ids of an `and` or `or` from its parts' (None: any id may match)."""
    if kind == "and":
        known = [p for p in parts if p is not None]
        return set.intersection(*known) if known else None
    if any(p is None for p in parts):
        return None
    return set().union(*parts)  # type: ignore[arg-type]


class Query:
    """A validated search body, ready to run over documents."""

    def __init__(
        self,
        body: Any,
        custom_field_types: Mapping[str, str | Iterable[str]],
        *,
        term_case: str = "sensitive",
        fields_max: int = 50,
        cursor_ttl: float = 30.0,
        cursor_max: int = 10_000,
        text_fields: Iterable[str] = (),
        reject: frozenset[str] = frozenset(),
    ):
        self.reject = reject  # condition shapes refused on purpose (SimConfig.reject_shapes)
        if not isinstance(body, dict):
            raise ValidationFailed(["The search body must be a JSON object."])
        unknown = sorted(set(body) - BODY_KEYS)
        if unknown:
            raise ValidationFailed([f"Unknown key(s) in search body: {', '.join(unknown)}."])
        # A shared custom field belongs to every object type it is associated with.
        self.cf_types = {
            cf_id: frozenset([types] if isinstance(types, str) else types)
            for cf_id, types in custom_field_types.items()
        }
        self.term_insensitive = term_case == "insensitive"
        # Text custom fields: public code looks their values up with a `text` condition in
        # `exact_value` mode; nothing shows Close accepting `term` on them, so it is refused.
        self.text_fields = frozenset(text_fields)
        self.fields_max = fields_max
        self.cursor_ttl = cursor_ttl
        self.cursor_max = cursor_max
        if "query" not in body:
            raise ValidationFailed(field_errors={"query": "This field is required."})
        self.object_types = _object_types(body["query"])
        if not self.object_types:
            raise ValidationFailed(
                field_errors={"query": "The query must contain an object_type clause at its top level."}
            )
        self.predicate = self._compile(body["query"], "query")
        self._root = body["query"]
        self.limit = _limit(body.get("_limit", DEFAULT_LIMIT))
        self.sort = self._compile_sort(body.get("sort") or [])
        self.fields = self._compile_fields(body.get("_fields"))
        self.signature = hashlib.sha1(
            json.dumps([body["query"], body.get("sort")], sort_keys=True).encode()
        ).hexdigest()[:16]
        self.cursor, self.served = self._decode_cursor(body.get("cursor"))

    # ------------------------------------------------------------------ run

    def run(
        self, leads: dict[str, Doc], contacts: dict[str, Doc], index: TermIndex | None = None
    ) -> dict[str, Any]:
        related = Related(leads, contacts)
        pools = {"lead": leads, "contact": contacts}
        hits = [
            (object_type, doc)
            for object_type in ("lead", "contact")
            if object_type in self.object_types
            for doc in self._scan(pools[object_type], object_type, index)
            if self.predicate(object_type, doc, related)
        ]
        keyed: Iterable[tuple[list[Any], str, Doc]] = ((self._sort_key(t, d), t, d) for t, d in hits)
        if self.cursor is not None:
            cursor = self.cursor
            keyed = (item for item in keyed if self._compare(item[0], cursor) > 0)
        compare = cmp_to_key(self._compare)
        # One cursor walk serves at most cursor_max records; then it ends as if nothing were left.
        limit = max(0, min(self.limit, self.cursor_max - self.served))
        # One page plus one (to know whether there is more): no need to sort every hit.
        first = heapq.nsmallest(limit + 1, keyed, key=lambda item: compare(item[0]))
        page = first[:limit]
        more = len(first) > limit and page and self.served + len(page) < self.cursor_max
        next_cursor = self._encode_cursor(page[-1][0], self.served + len(page)) if more else None
        return {"data": [self._project(t, d) for _, t, d in page], "cursor": next_cursor}

    def _scan(self, pool: dict[str, Doc], object_type: str, index: TermIndex | None) -> Iterable[Doc]:
        ids = None if index is None else self._candidates(self._root, object_type, index)
        if ids is None:
            return pool.values()
        return (pool[i] for i in ids if i in pool)

    def _candidates(self, node: Doc, object_type: str, index: TermIndex) -> set[str] | None:
        """Ids of `object_type` documents that can match `node` (a superset), or None when any may."""
        kind = node["type"]
        if kind in ("and", "or"):
            return _combined(kind, [self._candidates(q, object_type, index) for q in node["queries"]])
        if kind == "object_type":
            return None if node["object_type"] == object_type else set()
        if kind == "field_condition":
            field_types, key = self._field(node["field"], "query")
            if object_type not in field_types:
                return set()
            return self._term_ids(node, object_type, key, index)
        # has_related
        if node["this_object_type"] != object_type:
            return set()
        related_type = node["related_object_type"]
        if related_type in ("contact_email", "contact_phone", "contact_url"):
            return self._related_ids(node["related_query"], object_type, related_type, index)
        return None

    def _related_ids(self, node: Doc, object_type: str, related_type: str, index: TermIndex) -> set[str] | None:
        """Ids of `object_type` documents with a related email/phone/url that can match `node`."""
        kind = node["type"]
        if kind in ("and", "or"):
            return _combined(kind, [self._related_ids(q, object_type, related_type, index) for q in node["queries"]])
        if kind != "field_condition":
            return None
        field_types, name = self._field(node["field"], "query")
        if related_type not in field_types:
            return set()
        return self._term_ids(node, object_type, f"{related_type}.{name}", index)

    @staticmethod
    def _term_ids(node: Doc, object_type: str, key: str, index: TermIndex) -> set[str] | None:
        condition = node["condition"]
        if condition.get("type") == "term":
            values = condition["values"]
        elif condition.get("type") == "text" and condition.get("mode") == "exact_value":
            values = [condition["value"]]
        else:
            return None
        found: set[str] = set()
        for value in values:
            found |= index.ids(object_type, key, fold(value))
        return found

    def _project(self, object_type: str, doc: Doc) -> Doc:
        out: Doc = {"__object_type": object_type, "id": doc["id"]}
        for name in self.fields.get(object_type, ()):
            if name in doc:
                out[name] = doc[name]
        return out

    # -------------------------------------------------------------- compile

    def _compile(self, node: Any, path: str) -> Predicate:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            raise ValidationFailed(field_errors={path: "Each query node must be an object with a 'type'."})
        kind = node["type"]
        if kind in ("and", "or"):
            queries = node.get("queries")
            if not isinstance(queries, list):
                raise ValidationFailed(field_errors={path: f"An {kind!r} node needs a 'queries' list."})
            parts = [self._compile(q, f"{path}.queries.{i}") for i, q in enumerate(queries)]
            if kind == "and":
                return lambda t, d, r: all(p(t, d, r) for p in parts)
            return lambda t, d, r: any(p(t, d, r) for p in parts)
        if kind == "object_type":
            wanted = node.get("object_type")
            if wanted not in ("lead", "contact"):
                raise ValidationFailed(field_errors={path: f"Unsupported object_type {wanted!r}."})
            return lambda t, d, r: t == wanted
        if kind == "field_condition":
            return self._compile_condition(node, path)
        if kind == "has_related":
            this_type, related_type = node.get("this_object_type"), node.get("related_object_type")
            if (this_type, related_type) not in RELATIONS:
                raise ValidationFailed(
                    field_errors={path: f"Unsupported relation {this_type!r} -> {related_type!r}."}
                )
            inner = self._compile(node.get("related_query"), f"{path}.related_query")
            return lambda t, d, r: (
                t == this_type and any(inner(rt, rd, r) for rt, rd in r.of(t, d, related_type))
            )
        raise ValidationFailed(field_errors={path: f"Unknown query type {kind!r}."})

    def _field(self, spec: Any, path: str) -> tuple[frozenset[str], str]:
        """(the object types the field is on, document key) for a field spec."""
        if not isinstance(spec, dict):
            raise ValidationFailed(field_errors={path: "A field must be an object."})
        if spec.get("type") == "regular_field":
            object_type, name = spec.get("object_type"), spec.get("field_name")
            if name not in REGULAR_FIELDS.get(object_type, ()):
                raise ValidationFailed(field_errors={path: f"Unknown field {object_type!r}.{name!r}."})
            return frozenset([object_type]), name
        if spec.get("type") == "custom_field":
            cf_id = spec.get("custom_field_id")
            if cf_id not in self.cf_types:
                raise ValidationFailed(field_errors={path: f"Unknown custom field {cf_id!r}."})
            return self.cf_types[cf_id], f"custom.{cf_id}"
        raise ValidationFailed(field_errors={path: f"Unknown field type {spec.get('type')!r}."})

    def _compile_condition(self, node: Doc, path: str) -> Predicate:
        object_types, key = self._field(node.get("field"), f"{path}.field")
        insensitive = self.term_insensitive
        condition = node.get("condition")
        if not isinstance(condition, dict):
            raise ValidationFailed(field_errors={f"{path}.condition": "This field is required."})
        kind = condition.get("type")
        name = "custom_field" if key.startswith("custom.") else key
        for shape in sorted(f"{object_type}.{name}:{kind}" for object_type in object_types):
            if shape in self.reject:
                raise ValidationFailed(field_errors={f"{path}.condition": f"Unsupported condition {shape!r}."})
        match: Callable[[Any], bool]
        if kind == "term" and key.removeprefix("custom.") in self.text_fields:
            raise ValidationFailed(
                field_errors={
                    f"{path}.condition": "A term condition is not supported on a text custom field; "
                    "use a text condition with mode exact_value."
                }
            )
        if kind == "term":
            values = condition.get("values")
            if not isinstance(values, list) or not values or any(isinstance(v, dict | list) for v in values):
                raise ValidationFailed(
                    field_errors={f"{path}.condition": "A term condition needs a non-empty list of values."}
                )
            wanted = {term_key(v, insensitive) for v in values}
            match = lambda value: term_key(value, insensitive) in wanted  # noqa: E731
        elif kind == "text":
            text, mode = condition.get("value"), condition.get("mode", "full_words")
            if not isinstance(text, str) or mode not in TEXT_MODES:
                raise ValidationFailed(
                    field_errors={
                        f"{path}.condition": "A text condition needs a string value and a mode "
                        f"({', '.join(TEXT_MODES)})."
                    }
                )
            tokens = _WORD.findall(text.lower())
            if mode == "exact_value":
                exact = fold(text)
                match = lambda value: fold(value) == exact  # noqa: E731
            elif mode == "phrase":
                match = lambda value: _phrase(tokens, value)  # noqa: E731
            else:
                match = lambda value: _words(tokens, value)  # noqa: E731
        elif kind == "exists":
            match = lambda value: True  # noqa: E731
        elif kind == "moment_range":
            match = _moment_range(condition, f"{path}.condition")
        else:
            raise ValidationFailed(field_errors={f"{path}.condition": f"Unknown condition type {kind!r}."})

        def predicate(t: str, d: Doc, r: Related) -> bool:
            if t not in object_types:
                return False
            value = d.get(key)
            if value is None or value == "" or value == []:
                return False
            if isinstance(value, list):
                return any(match(v) for v in value)
            return match(value)

        return predicate

    def _compile_sort(self, sort: Any) -> list[tuple[str, str, bool]]:
        if not isinstance(sort, list):
            raise ValidationFailed(field_errors={"sort": "Must be a list."})
        out = []
        for i, spec in enumerate(sort):
            if not isinstance(spec, dict) or spec.get("direction", "asc") not in ("asc", "desc"):
                raise ValidationFailed(field_errors={f"sort.{i}": "Needs a field and direction asc|desc."})
            field = spec.get("field")
            object_types, key = self._field(field, f"sort.{i}.field")
            if field.get("type") != "regular_field" or key not in SORTABLE:
                raise ValidationFailed(
                    field_errors={
                        f"sort.{i}.field": f"Sorting on {key!r} is not supported; sort on one of "
                        f"{', '.join(sorted(SORTABLE))}."
                    }
                )
            out.append((object_types, key, spec.get("direction", "asc") == "desc"))
        return out or [(frozenset(("lead", "contact")), "date_created", False)]

    def _compile_fields(self, fields: Any) -> dict[str, list[str]]:
        if fields is None:
            return {}
        if not isinstance(fields, dict):
            raise ValidationFailed(field_errors={"_fields": "Must be an object keyed by object type."})
        out: dict[str, list[str]] = {}
        for object_type, names in fields.items():
            if object_type not in RESULT_FIELDS or not isinstance(names, list):
                raise ValidationFailed(
                    field_errors={"_fields": f"Unknown object type {object_type!r} or not a list."}
                )
            if len(names) > self.fields_max:
                raise ValidationFailed(field_errors={"_fields": {object_type: ["List is too long."]}})
            for name in names:
                cf_id = (
                    name[len("custom.") :] if isinstance(name, str) and name.startswith("custom.") else None
                )
                known = name in RESULT_FIELDS[object_type] or (
                    cf_id is not None and object_type in self.cf_types.get(cf_id, ())
                )
                if not known:
                    raise ValidationFailed(field_errors={"_fields": f"Unknown {object_type} field {name!r}."})
            out[object_type] = list(names)
        return out

    # ------------------------------------------------------ sort and cursor

    def _sort_key(self, object_type: str, doc: Doc) -> list[Any]:
        key: list[Any] = []
        for spec_types, field, _ in self.sort:
            value = doc.get(field) if object_type in spec_types else None
            key.append(_rank(value))
        key.append([0, doc["id"]])
        return key

    def _compare(self, a: list[Any], b: list[Any]) -> int:
        directions = [desc for _, _, desc in self.sort] + [False]
        for x, y, desc in zip(a, b, directions, strict=True):
            x, y = tuple(x), tuple(y)
            if x != y:
                # Missing values sort last in either direction.
                if x[0] == 2 or y[0] == 2:
                    return 1 if x[0] == 2 else -1
                result = -1 if x < y else 1
                return -result if desc else result
        return 0

    def _encode_cursor(self, key: list[Any], served: int) -> str:
        """The position, how many records this walk has served, and when the walk began."""
        began = self.began if self.cursor is not None else clock.time()
        raw = json.dumps({"s": self.signature, "k": key, "n": served, "t": began}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode()

    def _decode_cursor(self, cursor: Any) -> tuple[list[Any] | None, int]:
        if cursor is None:
            return None, 0
        try:
            data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            key, served, began = data["k"], int(data["n"]), float(data["t"])
            valid = data["s"] == self.signature and isinstance(key, list) and len(key) == len(self.sort) + 1
        except (AttributeError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise ValidationFailed(
                field_errors={"cursor": "Invalid cursor (it must come from the same query and sort)."}
            )
        if clock.time() - began > self.cursor_ttl:
            raise ValidationFailed(field_errors={"cursor": "Cursor expired; start the search again."})
        self.began = began
        return key, served


def _object_types(query: Any) -> set[str]:
    """Object types named by object_type clauses at the top level (the node itself or an `and`/`or` of them)."""
    if not isinstance(query, dict):
        return set()
    if query.get("type") == "object_type":
        return {query.get("object_type")} - {None}
    if query.get("type") in ("and", "or") and isinstance(query.get("queries"), list):
        found = [_object_types(q) for q in query["queries"] if isinstance(q, dict)]
        if query["type"] == "and":
            direct = [
                f for q, f in zip(query["queries"], found, strict=False) if q.get("type") == "object_type"
            ]
            if direct:
                return set.intersection(*direct)
            return set().union(*found) if found else set()
        return set().union(*found) if found and all(found) else set()
    return set()


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationFailed(field_errors={"_limit": "Must be a non-negative integer."})
    if value > MAX_LIMIT:
        raise ValidationFailed(
            field_errors={"_limit": f"Ensure this value is less than or equal to {MAX_LIMIT}."}
        )
    return value


def _moment_range(condition: Doc, path: str) -> Callable[[Any], bool]:
    """`on_or_after` (inclusive) and/or `before` (exclusive), each a fixed moment; values that are not
    dates never match.

    Supported moments: `{"type": "fixed_utc", "value": ISO-8601}` (naive = UTC) and
    `{"type": "fixed_local_date", "value": "YYYY-MM-DD", "which": "start"|"end"}`, where the
    simulated organisation's local time zone is UTC. Close's relative moments are not simulated.
    """
    unknown = sorted(set(condition) - {"type", "on_or_after", "before"})
    if unknown:
        raise ValidationFailed(field_errors={path: f"Unsupported moment_range key(s): {', '.join(unknown)}."})
    low = _moment(condition.get("on_or_after"), f"{path}.on_or_after")
    high = _moment(condition.get("before"), f"{path}.before")
    if low is None and high is None:
        raise ValidationFailed(field_errors={path: "A moment_range needs on_or_after and/or before."})

    def match(value: Any) -> bool:
        moment = _as_moment(value)
        if moment is None:
            return False
        return (low is None or moment >= low) and (high is None or moment < high)

    return match


def _moment(spec: Any, path: str) -> datetime | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("value"), str):
        raise ValidationFailed(field_errors={path: "A moment must be an object with a string value."})
    kind, value = spec.get("type"), spec["value"]
    try:
        if kind == "fixed_utc":
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        if kind == "fixed_local_date":
            day = date.fromisoformat(value)
            which = spec.get("which", "start")
            if which not in ("start", "end"):
                raise ValidationFailed(field_errors={f"{path}.which": "Must be start or end."})
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start if which == "start" else start + timedelta(days=1)
    except ValueError:
        raise ValidationFailed(field_errors={path: f"Invalid {kind} value {value!r}."}) from None
    raise ValidationFailed(
        field_errors={path: f"Unsupported moment type {kind!r} (fixed_utc, fixed_local_date)."}
    )


def _as_moment(value: Any) -> datetime | None:
    """A stored date or datetime as an aware UTC datetime (a date is its midnight UTC)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _words(tokens: list[str], value: Any) -> bool:
    have = set(_WORD.findall(str(value).lower()))
    return bool(tokens) and all(t in have for t in tokens)


def _phrase(tokens: list[str], value: Any) -> bool:
    have = _WORD.findall(str(value).lower())
    n = len(tokens)
    return bool(tokens) and any(have[i : i + n] == tokens for i in range(len(have) - n + 1))


def _rank(value: Any) -> list[Any]:
    """A JSON-safe, totally ordered sort key: numbers, then strings, then missing."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or value == "":
        return [2, ""]
    if isinstance(value, bool):
        return [1, str(value).lower()]
    if isinstance(value, int | float):
        return [0, value]
    return [1, str(value)]
