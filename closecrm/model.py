"""Typed values that flow between the mapper, the collapser, the engine and the writer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

OutcomeKind = Literal["created", "updated", "unchanged", "skipped", "failed"]

FLAG_NAMES = (
    "allow_creating_new_leads",
    "allow_updating_existing_leads",
    "allow_creating_new_contacts",
    "allow_creating_duplicate_contacts",
    "allow_updating_existing_contacts",
)


@dataclass(frozen=True)
class Flags:
    """The five allow_* switches of the action; all default to true."""

    allow_creating_new_leads: bool = True
    allow_updating_existing_leads: bool = True
    allow_creating_new_contacts: bool = True
    allow_creating_duplicate_contacts: bool = True
    allow_updating_existing_contacts: bool = True


@dataclass(frozen=True)
class Settings:
    """Destination settings. Empty strings mean "not configured"; the API key lives elsewhere."""

    lead_custom_field_id_for_company_id: str = ""
    contact_custom_field_id_for_user_id: str = ""
    default_lead_status_id: str = ""


@dataclass(frozen=True)
class UpsertRequest:
    """One "Create or Update Contact and Lead" request, already normalised.

    Collapsing several events of one person can accumulate several emails, phones
    and urls, so those are tuples in first-seen order; the first email is the
    lookup email. ``event_ids`` is provenance only and never part of the content.
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
    flags: Flags = Flags()
    event_ids: tuple[str, ...] = ()
    timestamp: str | None = None  # ISO-8601 of the latest event folded into this request

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
        out = asdict(self)
        out.pop("event_ids")
        out.pop("timestamp")
        return out

    def fingerprint(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("contact_emails", "contact_phones", "contact_urls", "event_ids"):
            out[k] = list(out[k])
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpsertRequest:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for k in ("contact_emails", "contact_phones", "contact_urls", "event_ids"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k] or ())
        if isinstance(kwargs.get("flags"), dict):
            kwargs["flags"] = Flags(**kwargs["flags"])
        return cls(**kwargs)


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

    stage: str  # parse | map | upsert | snapshot
    reason: str
    event: Any = None  # the original event (or raw text when it did not parse)
    request: dict[str, Any] | None = None
    error: Any = None
    attempts: int = 0
    event_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["event_ids"] = list(self.event_ids)
        return out
