"""Turn an event into "Create or Update Contact and Lead" requests through the user's mappings.

A field source is a path (a string starting with ``$.``, e.g. ``$.traits.email`` or
``$.properties.items[0].sku``), or a literal (anything else). A mapping's ``fields`` override
`DEFAULT_SOURCES` field by field; a field given as ``None`` is not mapped at all. ``traits.*``
paths fall back to ``context.traits.*`` except on group events (see `events.resolve_path`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from closecrm.events import MISSING, BadEvent, Event, check_value, resolve_path
from closecrm.model import Flags, UpsertRequest
from closecrm.normalize import is_plausible_url, is_valid_email, to_e164
from closecrm.trigger import Trigger, compile_trigger

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
)
CUSTOM_FIELD_FIELDS = ("lead_custom_fields", "contact_custom_fields")
ACTION_FIELDS = STRING_FIELDS + CUSTOM_FIELD_FIELDS
CUSTOM_FIELD_PREFIX = "cf_"

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

PRESETS: dict[str, MappingSpec] = {"identify": DEFAULT_MAPPING, "group": GROUP_PRESET}


class MappingError(ValueError):
    """A mapping whose field sources are not usable (config validation reports it with a path)."""


# ---------------------------------------------------------------------------- sources

_PATH_PART = re.compile(r"[^.\[\]]+")
_PATH_RE = re.compile(r"\$(?:\.[^.\[\]\s]+|\[\d+\])+")


@dataclass(frozen=True)
class PathSource:
    parts: tuple[str, ...]

    def value(self, data: dict[str, Any]) -> Any:
        return resolve_path(data, self.parts)


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

    @property
    def name(self) -> str:
        return self.spec.name

    def matches(self, event: Event) -> bool:
        return self.trigger.matches(event.raw)

    def build(self, event: Event) -> UpsertRequest:
        data = event.raw
        values: dict[str, Any] = {name: source.value(data) for name, source in self.sources.items()}
        for name, custom in self.custom_sources.items():
            if isinstance(custom, dict):
                values[name] = {key: source.value(data) for key, source in custom.items()}
            else:
                values[name] = custom.value(data)
        try:
            return request_from_values(
                values, self.spec.flags, event_ids=(event.message_id,), timestamp=event.timestamp
            )
        except BadEvent as exc:
            raise BadEvent(exc.reason, f"mapping {self.spec.name!r}: {exc.detail or exc.reason}") from None


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
    """One request per matching mapping, in mapping order; `BadEvent` when a value is unusable.

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
    """Normalise raw action-field values into a request; shared with snapshot sync.

    Missing/null/empty values are dropped; numbers for string fields become strings; custom
    field values keep their JSON type; emails must be valid, phones parseable and URLs plausible
    http(s) URLs or bare hosts; text must be encodable as UTF-8 (no lone surrogates).
    """
    kwargs: dict[str, Any] = {}
    for name in STRING_FIELDS:
        text = _as_string(values.get(name, MISSING), name)
        if text is None:
            continue
        check_value(text, name)
        if name == "contact_email":
            if not is_valid_email(text):
                raise BadEvent("invalid_email", name)
            kwargs["contact_emails"] = (text,)
        elif name == "contact_phone":
            if to_e164(text) is None:
                raise BadEvent("invalid_phone", name)
            kwargs["contact_phones"] = (text,)
        elif name == "contact_url":
            if not is_plausible_url(text):
                raise BadEvent("invalid_url", name)
            kwargs["contact_urls"] = (text,)
        else:
            kwargs[name] = text
    for name in CUSTOM_FIELD_FIELDS:
        custom = _custom_fields(values.get(name, MISSING), name)
        if custom:
            check_value(custom, name)
            kwargs[name] = custom
    return UpsertRequest(**kwargs, flags=flags, event_ids=event_ids, timestamp=timestamp)


def _as_string(value: Any, name: str) -> str | None:
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


def _custom_fields(value: Any, name: str) -> dict[str, Any]:
    if value is MISSING or value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEvent(f"wrong_type:{name}", type(value).__name__)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not str(key).startswith(CUSTOM_FIELD_PREFIX):
            raise BadEvent(f"wrong_type:{name}", f"key {key!r} does not start with 'cf_'")
        if item is MISSING or item is None or item == "":
            continue
        out[str(key)] = item
    return out
