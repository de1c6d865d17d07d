"""Typed values that flow between the mapper, the collapser, the engine and the writer."""

from __future__ import annotations

import hashlib
import json
import operator
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

OutcomeKind = Literal["created", "updated", "unchanged", "skipped", "failed"]

FLAG_NAMES = (
    "allow_creating_new_leads",
    "allow_updating_existing_leads",
    "allow_creating_new_contacts",
    "allow_creating_duplicate_contacts",
    "allow_updating_existing_contacts",
    "allow_merging",
)


@dataclass(frozen=True)
class Flags:
    """The allow_* switches of the action: the five of an upsert default to true, merging to false."""

    allow_creating_new_leads: bool = True
    allow_updating_existing_leads: bool = True
    allow_creating_new_contacts: bool = True
    allow_creating_duplicate_contacts: bool = True
    allow_updating_existing_contacts: bool = True
    # An alias may merge two people's leads and contacts, which deletes records: off unless asked for.
    allow_merging: bool = False

    def plain(self) -> bool:
        """Every switch a bool, as a config gives them (not some other truthy value)."""
        return _all_bools(_flag_values(self.__dict__))

    def __reduce__(self):  # noqa: ANN204
        # Pickled with every request: by value, not as a state dict naming each switch.
        values = _flag_values(self.__dict__)
        return (_shared_flags if _all_bools(values) else Flags, values)


_flag_values = operator.itemgetter(*FLAG_NAMES)
_BOOL = {bool}


def _all_bools(values: tuple[Any, ...]) -> bool:
    return set(map(type, values)) == _BOOL


@lru_cache(maxsize=64)
def _shared_flags(*values: bool) -> Flags:
    """One `Flags` per combination of switches (there are 64): frozen, so unpickled requests share it."""
    return Flags(*values)


@dataclass(frozen=True)
class Settings:
    """Destination settings. Empty strings mean "not configured"; the API key lives elsewhere."""

    lead_custom_field_id_for_company_id: str = ""
    contact_custom_field_id_for_user_id: str = ""
    default_lead_status_id: str = ""


@dataclass(frozen=True)
class DroppedField:
    """An action field left out of a request because its value could not be sent.

    Segment drops an invalid optional value and delivers the rest of the event; so does the mapper,
    and this record is how the audit log and the run's counters say so.
    """

    field: str  # the action field, or ``<custom fields>.<key>`` for one custom field
    reason: str  # the reason a dead letter would have given: invalid_phone, wrong_type:contact_title, ...
    mapping: str | None = None  # the mapping whose value it was

    def __reduce__(self):  # noqa: ANN204
        return (DroppedField, (self.field, self.reason, self.mapping))

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "mapping": self.mapping}

    @classmethod
    def from_json(cls, data: Any) -> DroppedField:
        if isinstance(data, dict):
            return cls(str(data.get("field")), str(data.get("reason")), data.get("mapping"))
        return cls(*data)


@dataclass(frozen=True)
class UpsertRequest:
    """One "Create or Update Contact and Lead" request, already normalised.

    Collapsing several events of one person can accumulate several emails, phones
    and urls, so those are tuples in first-seen order; the first email is the
    lookup email. ``event_ids``, ``timestamp``, ``mappings`` and ``dropped`` are provenance only and
    never part of the content; ``mappings`` and ``dropped`` are not compared either (they describe how
    a request was made, not what it asks of Close).
    """

    lead_name: str | None = None
    lead_company_id: str | None = None
    lead_description: str | None = None
    lead_status_id: str | None = None
    lead_custom_fields: dict[str, Any] = field(default_factory=dict)
    contact_name: str | None = None
    contact_emails: tuple[str, ...] = ()
    contact_phones: tuple[str, ...] = ()
    contact_urls: tuple[str, ...] = ()
    contact_title: str | None = None
    contact_user_id: str | None = None
    contact_custom_fields: dict[str, Any] = field(default_factory=dict)
    # An alias: the user id (``previousId``) whose contacts become ``contact_user_id``'s.
    alias_previous_id: str | None = None
    flags: Flags = Flags()
    event_ids: tuple[str, ...] = ()
    timestamp: str | None = None  # ISO-8601 of the latest event folded into this request
    since: str | None = None  # ISO-8601 of the earliest event folded in, when several were
    # The requests a collapsed request was merged from, in event order (closecrm.events.collapse.Parts):
    # the engine applies them one by one where another person's request falls between them.
    parts: Any = field(default=(), compare=False, repr=False)
    mappings: tuple[str, ...] = field(default=(), compare=False)  # names of the mappings it came from
    dropped: tuple[DroppedField, ...] = field(default=(), compare=False)  # values left out, and why

    @property
    def contact_email(self) -> str | None:
        """The lookup email: the first one seen."""
        return self.contact_emails[0] if self.contact_emails else None

    def has_contact_fields(self) -> bool:
        return bool(
            self.contact_name
            or self.contact_emails
            or self.contact_phones
            or self.contact_urls
            or self.contact_title
            or self.contact_user_id
            or self.contact_custom_fields
        )

    def content(self) -> dict[str, Any]:
        """Everything that decides what Close ends up holding (no provenance)."""
        out = asdict(replace(self, parts=()))  # parts: its own merged requests, not content
        for provenance in PROVENANCE:
            out.pop(provenance)
        return out

    def fingerprint(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        out = asdict(replace(self, parts=()))
        out.pop("parts")
        for k in ("contact_emails", "contact_phones", "contact_urls", "event_ids", "mappings"):
            out[k] = list(out[k])
        out["dropped"] = [d.to_json() for d in self.dropped]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpsertRequest:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for k in ("contact_emails", "contact_phones", "contact_urls", "event_ids", "mappings"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k] or ())
        if "dropped" in kwargs:
            kwargs["dropped"] = tuple(DroppedField.from_json(d) for d in kwargs["dropped"] or ())
        if isinstance(kwargs.get("flags"), dict):
            kwargs["flags"] = Flags(**kwargs["flags"])
        return cls(**kwargs)

    def provenance_after(self, earlier: UpsertRequest) -> dict[str, Any]:
        """The provenance of this request merged after ``earlier`` (collapsing): the mapping names and
        dropped fields of both, each once, in first-seen order (event ids and timestamp are the caller's)."""
        return {
            "mappings": tuple(dict.fromkeys((*earlier.mappings, *self.mappings))),
            "dropped": tuple(dict.fromkeys((*earlier.dropped, *self.dropped))),
        }

    def __reduce__(self):  # noqa: ANN204
        # Every request crosses the job's shuffles pickled: its values by position (no field names in
        # each pickle), rebuilt without running the frozen __init__ (`_request_of`).
        return (_request_of, _request_values(self.__dict__))


_REQUEST_FIELDS = tuple(f.name for f in fields(UpsertRequest))
_request_values = operator.itemgetter(*_REQUEST_FIELDS)


def request_of_state(state: dict[str, Any] | Iterable[tuple[str, Any]]) -> UpsertRequest:
    """The request whose fields hold ``state``, which names every field in order (e.g. another request's
    ``vars`` with some values replaced, or (name, value) pairs): ``UpsertRequest(**state)``, without the
    frozen __init__'s per-field object.__setattr__. The caller gives each request its own custom-field
    dicts."""
    request = object.__new__(UpsertRequest)
    request.__dict__.update(state)
    return request


def _request_of(*values: Any) -> UpsertRequest:
    """The request whose fields, in order, hold ``values`` (what `UpsertRequest.__reduce__` gives)."""
    return request_of_state(zip(_REQUEST_FIELDS, values, strict=False))  # `__reduce__` gives them all


PROVENANCE = ("event_ids", "timestamp", "since", "parts", "mappings", "dropped")


@dataclass(frozen=True)
class Outcome:
    """How one request ended. ``kind`` is the outcome; ``reason`` qualifies skipped/failed."""

    kind: OutcomeKind
    reason: str | None = None  # skipped:<reason> / failed:<error>
    branch: str | None = None  # which step of the decision procedure ran, e.g. "lead_by_company_id"
    lead_ids: tuple[str, ...] = ()
    contact_ids: tuple[str, ...] = ()
    http_status: int | None = None
    error_body: Any = None
    calls: int = 0  # API calls this request made (its share of batched searches included)
    attempts: int = 1
    changes: tuple[dict[str, Any], ...] = ()  # field-level changes (always filled in dry runs)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.reason}" if self.reason else self.kind

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        for k in ("lead_ids", "contact_ids", "changes"):
            out[k] = list(out[k])
        return out


@dataclass(frozen=True)
class DeadLetter:
    """One record shape for every stage that can reject something."""

    stage: str  # parse | map | upsert | snapshot | replay
    reason: str
    event: Any = None  # the original event as received (or raw text when it did not parse)
    request: dict[str, Any] | None = None
    error: Any = None
    attempts: int = 0
    event_ids: tuple[str, ...] = ()
    source: dict[str, Any] | None = None  # where the input was read (`Origin.to_json`), when known

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["event_ids"] = list(self.event_ids)
        return out


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload was read, so its dead letter can be traced back to it.

    ``kind``: ``line`` (a JSON-lines file, ``position`` its 1-based line), ``record`` (an Avro or
    Parquet file, ``position`` its 1-based record), ``file`` (a file that could not be read),
    ``pubsub`` (``name`` the message id) or ``kafka`` (``name`` the topic, with partition and offset).
    """

    kind: str
    name: str
    position: int | None = None
    partition: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.kind in ("line", "record"):
            return {"file": self.name, self.kind: self.position}
        if self.kind == "pubsub":
            return {"pubsub_message_id": self.name}
        if self.kind == "kafka":
            return {"kafka_topic": self.name, "partition": self.partition, "offset": self.position}
        return {self.kind: self.name}

    def __reduce__(self):  # noqa: ANN204
        # Every event carries one through each shuffle; the state a frozen slots dataclass pickles by
        # default is built by a dataclasses.fields() walk per object, on both ends.
        return (Origin, (self.kind, self.name, self.position, self.partition))


@dataclass(frozen=True, slots=True)
class Received:
    """A payload as a source read it, and where from (`Origin`)."""

    payload: Any
    origin: Origin

    def __reduce__(self):  # noqa: ANN204
        # Pickled with every request (its event, for a dead letter): see `Origin.__reduce__`.
        return (Received, (self.payload, self.origin))


def flat_read(payload: Any, origin: Origin | None) -> tuple[Any, ...]:
    """A payload and where it was read as one plain tuple: a batch run packs one per event, and a plain
    tuple pickles without a Python call per object (`Origin.__reduce__`), in half the time."""
    if origin is None:
        return (payload,)
    return (payload, origin.kind, origin.name, origin.position, origin.partition)


def read_of(flat: tuple[Any, ...]) -> tuple[Any, Origin | None]:
    """(payload, origin) back from `flat_read`."""
    return flat[0], (Origin(*flat[1:]) if len(flat) > 1 else None)


# ---------------------------------------------------------------------------- runs

LETTERS_PREFIX = "dead-letters-"  # a run's dead letters: dead-letters-<run id>.jsonl


def new_run_id(now: datetime | None = None) -> str:
    """A run's id: its start (UTC, to the second) and 24 random bits, e.g. ``20261201T101530Z-3fa2c1``.

    It names the run's files, so two runs never write the same file, and they list in start order.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def letters_file_name(run_id: str) -> str:
    return f"{LETTERS_PREFIX}{run_id}.jsonl"


def utc_now_text() -> str:
    """The time now, as the audit log and dead letters stamp it (UTC, ISO-8601, to the millisecond)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
