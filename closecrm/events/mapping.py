"""Turn an event into "Create or Update Contact and Lead" requests through the user's mappings.

A field source is a path (a string starting with ``$.``, e.g. ``$.traits.email`` or
``$.properties.items[0].sku``), or a literal (anything else). A mapping's ``fields`` override
`DEFAULT_SOURCES` field by field; a field given as ``None`` is not mapped at all. ``traits.*``
paths fall back to ``context.traits.*`` except on group events (see `events.resolve_path`).

``alias_previous_id`` has no default source: only a mapping that names it (the ``alias`` preset reads
``$.previousId``) makes an alias request, which also needs ``contact_user_id``, the id it joins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from closecrm.events.normalize import is_plausible_url, is_valid_email, to_e164
from closecrm.events.parse import MISSING, BadEvent, Event, check_value, resolve_path
from closecrm.events.trigger import Trigger, compile_trigger
from closecrm.model import FLAG_NAMES, DroppedField, Flags, UpsertRequest, request_of_state

STRING_FIELDS = (
    "lead_name",
    "lead_company_id",
    "lead_description",
    "lead_status_id",
    "contact_name",
    "contact_email",
    "contact_phone",
    "contact_url",
    "contact_title",
    "contact_user_id",
    "alias_previous_id",
)
CUSTOM_FIELD_FIELDS = ("lead_custom_fields", "contact_custom_fields")
ACTION_FIELDS = STRING_FIELDS + CUSTOM_FIELD_FIELDS
CUSTOM_FIELD_PREFIX = "cf_"

# A bad value in these fails the whole event instead of being dropped: they decide which lead and
# contact are looked up and written, so a request without them would land on other records (a
# person's contact under a lead that is not their company's, say). The email is a lookup identity too,
# but only a fallback one: it is dropped like any optional value (see `request_dropping_bad_values`).
# An alias's previous id names the person folded into the user id: dropping it would turn the alias
# into an ordinary upsert of the user id, silently.
IDENTITY_FIELDS = ("lead_company_id", "contact_user_id", "alias_previous_id")
# Reasons that are never a matter of one field: text that is not text, or a structure too deep to walk.
_UNDROPPABLE_REASONS = ("invalid_unicode", "too_deep")

DEFAULT_SOURCES: dict[str, Any] = {
    "lead_name": "$.traits.company.name",
    "lead_company_id": "$.traits.company.id",
    "contact_name": "$.traits.name",
    "contact_email": "$.traits.email",
    "contact_phone": "$.traits.phone",
    "contact_url": "$.traits.website",
    "contact_title": "$.traits.title",
    "contact_user_id": "$.userId",
}


@dataclass(frozen=True)
class MappingSpec:
    """One mapping as configured: a trigger, field sources (overriding the defaults) and flags."""

    name: str
    trigger: str
    fields: dict[str, Any] = field(default_factory=dict)
    flags: Flags = Flags()


DEFAULT_MAPPING = MappingSpec(name="Identify to Close", trigger='type = "identify"')

# Group traits describe the company, so nothing person-level is read from them.
GROUP_PRESET = MappingSpec(
    name="Group to Close",
    trigger='type = "group"',
    fields={
        "lead_company_id": "$.groupId",
        "lead_name": "$.traits.name",
        "contact_user_id": "$.userId",
        "contact_name": None,
        "contact_email": None,
        "contact_phone": None,
        "contact_url": None,
        "contact_title": None,
    },
)

# An alias says previousId and userId are one person: it carries the two ids and nothing else (what
# the engine does with them, merging included, is its business and the allow_merging flag's).
ALIAS_PRESET = MappingSpec(
    name="Alias to Close",
    trigger='type = "alias"',
    fields={
        **{name: None for name in ACTION_FIELDS},  # nothing but the two ids, whatever the defaults
        "alias_previous_id": "$.previousId",
        "contact_user_id": "$.userId",
    },
)

PRESETS: dict[str, MappingSpec] = {"identify": DEFAULT_MAPPING, "group": GROUP_PRESET, "alias": ALIAS_PRESET}


class MappingError(ValueError):
    """A mapping whose field sources are not usable (config validation reports it with a path)."""


# ---------------------------------------------------------------------------- sources

_PATH_PART = re.compile(r"[^.\[\]]+")
_PATH_RE = re.compile(r"\$(?:\.[^.\[\]\s]+|\[\d+\])+")


@dataclass(frozen=True)
class PathSource:
    parts: tuple[str, ...]
    # ``("context", *parts)`` when a ``traits.*`` path may fall back to it (`events.resolve_path`)
    _fallback: tuple[str, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if len(self.parts) > 1 and self.parts[0] == "traits":
            object.__setattr__(self, "_fallback", ("context", *self.parts))

    def value(self, data: dict[str, Any]) -> Any:
        """``resolve_path(data, self.parts)``, inlined where each step is a plain dict: it runs for every
        field of every event."""
        value = _walk_dicts(data, self.parts)
        if value is _NOT_PLAIN:
            return resolve_path(data, self.parts)
        if (
            (value is MISSING or value is None or value == "")
            and self._fallback
            and data.get("type") != "group"
        ):
            fallback = _walk_dicts(data, self._fallback)
            if fallback is _NOT_PLAIN:
                return resolve_path(data, self.parts)
            if fallback is not MISSING:
                return fallback
        return value


_NOT_PLAIN: Any = object()  # a step of the path is not a plain dict: `resolve_path` walks it


def _walk_dicts(data: Any, parts: tuple[str, ...]) -> Any:
    """The value at ``parts`` when each step is a plain dict, `MISSING` when a key is absent."""
    current = data
    for part in parts:
        if type(current) is not dict:
            return _NOT_PLAIN
        current = current.get(part, MISSING)
        if current is MISSING:
            return MISSING
    return current


@dataclass(frozen=True)
class LiteralSource:
    literal: Any

    def value(self, data: dict[str, Any]) -> Any:
        return self.literal


Source = PathSource | LiteralSource


def is_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$.")


def parse_source(value: Any) -> Source:
    """``"$.a.b[0]"`` becomes a path; anything else is a literal."""
    if not is_path(value):
        return LiteralSource(value)
    if not _PATH_RE.fullmatch(value):
        raise MappingError(f"malformed path {value!r} (expected like $.traits.email or $.items[0].sku)")
    return PathSource(tuple(_PATH_PART.findall(value[1:])))


@dataclass(frozen=True)
class CompiledMapping:
    """A mapping ready to run: trigger parsed, effective sources resolved against the defaults."""

    spec: MappingSpec
    trigger: Trigger
    sources: dict[str, Source]  # string fields
    custom_sources: dict[str, Source | dict[str, Source]]  # whole-object path, or per cf_ key
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False, default=())
    _source_list: tuple[Source, ...] = field(init=False, repr=False, compare=False, default=())

    @property
    def name(self) -> str:
        return self.spec.name

    def matches(self, event: Event) -> bool:
        return self.trigger.matches(event.raw)

    def __post_init__(self) -> None:
        # The string fields' names and sources in one order, for `_prepared`'s key.
        object.__setattr__(self, "_names", tuple(self.sources))
        object.__setattr__(self, "_source_list", tuple(self.sources.values()))

    def build(self, event: Event) -> UpsertRequest:
        data = event.raw
        if not self.custom_sources:
            texts = tuple([source.value(data) for source in self._source_list])
            if _TEXT_TYPES.issuperset(map(type, texts)):
                return self._request(event, texts)
        values: dict[str, Any] = {name: source.value(data) for name, source in self.sources.items()}
        for name, custom in self.custom_sources.items():
            if isinstance(custom, dict):
                values[name] = {key: source.value(data) for key, source in custom.items()}
            else:
                values[name] = custom.value(data)
        try:
            return request_dropping_bad_values(
                values,
                self.spec.flags,
                event_ids=(event.message_id,),
                timestamp=event.timestamp,
                mapping=self.spec.name,
            )
        except BadEvent as exc:
            raise _in_mapping(self.spec.name, exc) from None

    def _request(self, event: Event, texts: tuple[str | None, ...]) -> UpsertRequest:
        """What `request_dropping_bad_values` makes of these string fields' values, from `_prepared`'s
        memo (people repeat the same values event after event)."""
        mapping = self.spec.name
        try:
            normalised, drops = _prepared(self._names, texts)
        except BadEvent as exc:
            raise _in_mapping(mapping, exc) from None
        state = _BLANK_REQUEST.copy()  # every field, in order
        state.update(normalised)  # no custom fields: this mapping has no source for them
        state["lead_custom_fields"] = {}
        state["contact_custom_fields"] = {}
        state["flags"] = self.spec.flags
        state["event_ids"] = (event.message_id,)
        state["timestamp"] = event.timestamp
        state["mappings"] = (mapping,) if mapping is not None else ()
        state["dropped"] = tuple(DroppedField(name, reason, mapping) for name, reason in drops) if drops else ()
        return request_of_state(state)


def _in_mapping(mapping: str | None, exc: BadEvent) -> BadEvent:
    """``exc``, its detail naming the mapping whose value it is about."""
    return BadEvent(exc.reason, f"mapping {mapping!r}: {exc.detail or exc.reason}")


# Values `_prepared` takes: text, null, and a path's MISSING (an object equal only to itself), so equal
# keys are equal values of the same type.
_TEXT_TYPES = frozenset((str, type(None), type(MISSING)))
_BLANK_REQUEST = vars(UpsertRequest())


@lru_cache(maxsize=16_384)
def _prepared(
    names: tuple[str, ...], texts: tuple[Any, ...]
) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """`_normalised` of string fields' values, bounded-memoised: the request's fields (never handed out:
    the caller copies them into a request), and each value dropped (field, reason). Raises, uncached,
    what `request_dropping_bad_values` raises.

    A pure function of its input: the checks (`is_valid_email`, `to_e164`, `is_plausible_url`,
    `check_value`) read nothing but the value.
    """
    drops: list[tuple[str, str]] = []

    def drop(name: str, exc: BadEvent) -> None:
        _refuse_undroppable(name, exc)
        drops.append((name, exc.reason))

    return _normalised(dict(zip(names, texts, strict=True)), drop), tuple(drops)


def compile_mapping(spec: MappingSpec) -> CompiledMapping:
    unknown = sorted(set(spec.fields) - set(ACTION_FIELDS))
    if unknown:
        raise MappingError(f"unknown action field(s): {', '.join(unknown)}")
    effective = {**DEFAULT_SOURCES, **spec.fields}
    sources: dict[str, Source] = {}
    custom_sources: dict[str, Source | dict[str, Source]] = {}
    for name, raw in effective.items():
        if raw is None:
            continue
        if name in CUSTOM_FIELD_FIELDS:
            if isinstance(raw, dict):
                bad = [key for key in raw if not str(key).startswith(CUSTOM_FIELD_PREFIX)]
                if bad:
                    raise MappingError(f"{name}: keys must start with 'cf_': {', '.join(map(str, bad))}")
                custom_sources[name] = {key: parse_source(value) for key, value in raw.items()}
            elif is_path(raw):
                custom_sources[name] = parse_source(raw)
            else:
                raise MappingError(f"{name}: expected an object {{cf_...: source}} or a $. path to one")
        else:
            sources[name] = parse_source(raw)
    return CompiledMapping(spec, compile_trigger(spec.trigger), sources, custom_sources)


def compile_mappings(specs: Iterable[MappingSpec]) -> list[CompiledMapping]:
    return [compile_mapping(spec) for spec in specs]


def map_event(event: Event, mappings: Sequence[CompiledMapping]) -> list[UpsertRequest]:
    """One request per matching mapping, in mapping order. A value that cannot be sent is left out and
    named in the request's ``dropped``; `BadEvent` when the event cannot be used at all (a bad company
    or user id, an alias without a user id, text that is not text).

    Opt-out (`events.opted_out`) is the caller's check, so it can record the skip reason.
    """
    return [mapping.build(event) for mapping in mappings if mapping.matches(event)]


# ---------------------------------------------------------------------------- normalisation


def request_from_values(
    values: Mapping[str, Any],
    flags: Flags = Flags(),
    *,
    event_ids: tuple[str, ...] = (),
    timestamp: str | None = None,
) -> UpsertRequest:
    """Normalise raw action-field values into a request, strictly: any unusable value raises
    `BadEvent` (snapshot sync, which dead-letters such rows).

    Missing/null/empty values are dropped; numbers for string fields become strings; custom
    field values keep their JSON type (objects, and lists holding containers, are refused: no
    custom field takes them); emails must be valid, phones parseable and URLs plausible http(s)
    URLs or bare hosts; text must be encodable as UTF-8 (no lone surrogates); an alias previous id
    needs a user id.
    """
    kwargs = _normalised(values, None)
    return UpsertRequest(**kwargs, flags=flags, event_ids=event_ids, timestamp=timestamp)


def request_dropping_bad_values(
    values: Mapping[str, Any],
    flags: Flags = Flags(),
    *,
    event_ids: tuple[str, ...] = (),
    timestamp: str | None = None,
    mapping: str | None = None,
) -> UpsertRequest:
    """Like `request_from_values`, but a value that cannot be sent is left out and recorded in the
    request's ``dropped`` (field and reason), as Segment drops an invalid optional value and delivers
    the rest. That includes the email: a request left with no company id, user id or email is then
    skipped as ``no_identity`` by the engine, as it would be had the event carried no email.

    Still raises `BadEvent` for a bad company id, user id or alias previous id (`IDENTITY_FIELDS`), for
    an alias without a user id (``missing_contact_user_id``), and for text that is not text or values
    nested too deep, which no field can be trusted with.
    """
    dropped: list[DroppedField] = []

    def drop(name: str, exc: BadEvent) -> None:
        _refuse_undroppable(name, exc)
        dropped.append(DroppedField(name, exc.reason, mapping))

    kwargs = _normalised(values, drop)
    return UpsertRequest(
        **kwargs,
        flags=flags,
        event_ids=event_ids,
        timestamp=timestamp,
        mappings=(mapping,) if mapping is not None else (),
        dropped=tuple(dropped),
    )


def _refuse_undroppable(name: str, exc: BadEvent) -> None:
    """Raise ``exc`` when the value it is about cannot be dropped: the event fails instead."""
    if name.split(".", 1)[0] in IDENTITY_FIELDS or exc.reason.startswith(_UNDROPPABLE_REASONS):
        raise exc


# A stored request's lists, and the action field each item is checked as.
_LIST_FIELDS = {"contact_emails": "contact_email", "contact_phones": "contact_phone", "contact_urls": "contact_url"}
_STORED_SCALARS = tuple(name for name in STRING_FIELDS if name not in _LIST_FIELDS.values())
_STORED_PROVENANCE = ("event_ids", "timestamp", "since", "mappings", "dropped")
# Keys a request's JSON may hold: its content, its provenance, and the flags it was sent with (never
# trusted: see `request_from_stored`).
STORED_KEYS = frozenset((*_STORED_SCALARS, *_LIST_FIELDS, *CUSTOM_FIELD_FIELDS, *_STORED_PROVENANCE, "flags"))


def request_from_stored(data: Any, flags: Flags) -> UpsertRequest:
    """A request read back from JSON (a dead letter's ``request``), checked as strictly as
    `request_from_values` checks fresh values, and given ``flags`` (the config's, never the stored ones).

    Emails, phones and URLs must be lists whose every item passes the check one fresh value passes;
    custom fields too; provenance must have its types. `BadEvent` names the first problem: an unknown
    key, a wrong type (``"contact_emails": "a@x.com"`` is a text, not a list), an invalid value.
    """
    if not isinstance(data, dict):
        raise BadEvent("wrong_type:request", type(data).__name__)
    unknown = sorted(str(key) for key in data if key not in STORED_KEYS)
    if unknown:
        raise BadEvent("unknown_field", ", ".join(unknown))
    kwargs: dict[str, Any] = {}
    for name in _STORED_SCALARS:
        text = _string_field(name, data.get(name, MISSING))
        if text is not None:
            kwargs[name] = text
    for plural, single in _LIST_FIELDS.items():
        items = _stored_list(data, plural)
        texts = (_string_field(single, item) for item in items)
        kwargs[plural] = tuple(text for text in texts if text is not None)
    for name in CUSTOM_FIELD_FIELDS:
        custom = _custom_fields(data.get(name, MISSING), name)
        check_value(custom, name)
        kwargs[name] = custom
    if kwargs.get("alias_previous_id") is not None and kwargs.get("contact_user_id") is None:
        raise BadEvent("missing_contact_user_id", "an alias (alias_previous_id) needs the user id it joins")
    for name in ("timestamp", "since"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise BadEvent(f"wrong_type:{name}", type(value).__name__)
        kwargs[name] = value
    for name in ("event_ids", "mappings"):
        items = _stored_list(data, name)
        if not all(isinstance(item, str) for item in items):
            raise BadEvent(f"wrong_type:{name}", "a list of texts expected")
        kwargs[name] = tuple(items)
    dropped = _stored_list(data, "dropped")
    if not all(isinstance(item, dict) for item in dropped):
        raise BadEvent("wrong_type:dropped", "a list of objects expected")
    return UpsertRequest(**kwargs, flags=flags, dropped=tuple(DroppedField.from_json(d) for d in dropped))


def _stored_list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadEvent(f"wrong_type:{name}", f"a {type(value).__name__}, not a list")
    return value


def strictest_flags(candidates: Iterable[Flags]) -> Flags:
    """What every one of ``candidates`` allows, and nothing more (the defaults when there is none)."""
    chosen = list(candidates)
    if not chosen:
        return Flags()
    return Flags(**{name: all(getattr(f, name) for f in chosen) for name in FLAG_NAMES})


def flags_for_stored(names: Sequence[str], specs: Sequence[MappingSpec]) -> Flags:
    """The flags a request stored without its events is sent with: those of the mappings it names when
    the config still has each of them (all of them together, if several), else what every mapping
    of the config allows. Never the stored request's own: the config given now decides."""
    by_name = {spec.name: spec.flags for spec in specs}
    if names and all(name in by_name for name in names):
        return strictest_flags(by_name[name] for name in names)
    return strictest_flags(by_name.values())


_Drop = Callable[[str, BadEvent], None]


def _normalised(values: Mapping[str, Any], drop: _Drop | None) -> dict[str, Any]:
    """The request's content fields. A bad value raises, or with ``drop`` is handed to it (which
    raises to refuse it) and left out."""
    kwargs: dict[str, Any] = {}
    for name in STRING_FIELDS:
        try:
            text = _string_field(name, values.get(name, MISSING))
        except BadEvent as exc:
            if drop is None:
                raise
            drop(name, exc)
            continue
        if text is None:
            continue
        if name == "contact_email":
            kwargs["contact_emails"] = (text,)
        elif name == "contact_phone":
            kwargs["contact_phones"] = (text,)
        elif name == "contact_url":
            kwargs["contact_urls"] = (text,)
        else:
            kwargs[name] = text
    for name in CUSTOM_FIELD_FIELDS:
        try:
            custom = _custom_fields(values.get(name, MISSING), name, drop)
        except BadEvent as exc:
            if drop is None:
                raise
            drop(name, exc)
            continue
        if custom:
            check_value(custom, name)
            kwargs[name] = custom
    if "alias_previous_id" in kwargs and "contact_user_id" not in kwargs:
        # An alias joins the previous id to a user id; with no user id there is nothing to join it to.
        raise BadEvent("missing_contact_user_id", "an alias (alias_previous_id) needs the user id it joins")
    return kwargs


def _string_field(name: str, value: Any) -> str | None:
    """One string field's value as the request carries it, None when absent; `BadEvent` when unusable."""
    text = _as_string(value, name)
    if text is None:
        return None
    if not text.isascii():  # ASCII text is always encodable: the walk would find nothing in it
        check_value(text, name)
    if name == "contact_email" and not is_valid_email(text):
        raise BadEvent("invalid_email", name)
    if name == "contact_phone" and to_e164(text) is None:
        raise BadEvent("invalid_phone", name)
    if name == "contact_url" and not is_plausible_url(text):
        raise BadEvent("invalid_url", name)
    return text


def _as_string(value: Any, name: str) -> str | None:
    if type(value) is str:  # nearly every value: the checks below are for the other types
        return value.strip() or None
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool):
        raise BadEvent(f"wrong_type:{name}", "a boolean")
    if isinstance(value, Decimal):
        value = int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadEvent(f"wrong_type:{name}", "NaN or infinity")
        value = int(value) if value.is_integer() else value
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if not isinstance(value, str):
        raise BadEvent(f"wrong_type:{name}", type(value).__name__)
    text = value.strip()
    return text or None


def _custom_fields(value: Any, name: str, drop: _Drop | None = None) -> dict[str, Any]:
    if value is MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEvent(f"wrong_type:{name}", type(value).__name__)
    out: dict[str, Any] = {}
    for key, item in value.items():
        problem = None
        if not str(key).startswith(CUSTOM_FIELD_PREFIX):
            problem = BadEvent(f"wrong_type:{name}", f"key {key!r} does not start with 'cf_'")
        elif not _sendable_custom_value(item):
            problem = BadEvent(f"wrong_type:{name}", f"{key}: {type(item).__name__} is no custom field value")
        if problem is not None:
            if drop is None:
                raise problem
            drop(f"{name}.{key}", problem)
            continue
        if item is MISSING or item is None or item == "":
            continue
        out[str(key)] = item
    return out


def _sendable_custom_value(item: Any) -> bool:
    """Close's custom fields hold text, numbers, dates and choices (a list of them for multiple
    choices): an object, or a list holding containers, is refused whatever the field's type."""
    if isinstance(item, dict):
        return False
    if isinstance(item, list | tuple):
        return not any(isinstance(v, dict | list | tuple) for v in item)
    return True
