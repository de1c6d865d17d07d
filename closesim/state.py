"""The simulator's in-memory organisation: leads, contacts, custom fields, statuses and a lagging search index."""

from __future__ import annotations

import base64
import heapq
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from closesim.config import SimConfig
from closesim.errors import NotFound, ValidationFailed
from closesim.search import TermIndex
from closesim.values import email_ok, phone_fields

ORGANIZATION_ID = "orga_simulatedOrganization0000000000000000000000"
USER_ID = "user_simulatedUser00000000000000000000000000000"
DEFAULT_STATUSES = ("Potential", "Bad Fit", "Qualified", "Customer")
CUSTOM_FIELD_TYPES = (
    "text",
    "textarea",
    "number",
    "date",
    "datetime",
    "choices",
    "hidden",
    "user",
    "contact",
)
OBJECT_TYPES = ("lead", "contact")
SHARED = "shared"  # Close's Shared Custom Fields: one field, associated with one or more object types
FIELD_KINDS = (*OBJECT_TYPES, SHARED)
DEFAULT_TYPE = "office"
TEXT_TYPES = ("text", "textarea")

Record = dict[str, Any]


class Database:
    """Leads and contacts as Close stores them; every public method is thread-safe.

    Records are kept in an internal shape and rendered to Close's JSON on the way out.
    The search index holds rendered copies that become visible ``config.search_lag``
    seconds after the write, while reads by id always see the current record.
    A lead merge asked for with ``config.merge_delay_seconds`` > 0 waits in a queue; every method
    that touches leads or contacts first applies the merges that are due (``_current``).
    """

    def __init__(self, config: SimConfig):
        self.config = config
        self._lock = threading.RLock()
        self._rng = random.Random()
        self.reset()

    # ----------------------------------------------------------------- basics

    def reset(self) -> None:
        with self._lock:
            seed = self.config.random_seed
            self._rng.seed(seed if seed is not None else os.urandom(16))  # a seeded reset repeats its ids
            self._leads: dict[str, Record] = {}
            self._contacts: dict[str, Record] = {}
            self._custom_fields: dict[str, dict[str, Record]] = {kind: {} for kind in FIELD_KINDS}
            self._statuses: dict[str, Record] = {}
            self._last_time = datetime(2000, 1, 1, tzinfo=UTC)
            self._index: dict[str, dict[str, Record]] = {"lead": {}, "contact": {}}
            self._terms = TermIndex()
            self._pending: deque[tuple[float, str, str, Record | None]] = deque()
            self._merges: list[Record] = []
            self._merge_queue: list[tuple[float, int, Record]] = []  # heap of (due, order, merge)
            for label in DEFAULT_STATUSES:
                self._add_status({"label": label})

    @contextmanager
    def _current(self) -> Iterator[None]:
        """The store's lock, with the merges that are due applied first."""
        with self._lock:
            if self._merge_queue:
                self._settle_merges()
            yield

    def new_id(self, prefix: str) -> str:
        """`prefix_` + 43 url-safe characters, like Close's ids."""
        with self._lock:
            raw = self._rng.randbytes(32)
        return f"{prefix}_{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"

    def _now(self) -> str:
        """Server time, strictly increasing so that date_created orders records stably."""
        t = datetime.now(UTC)
        if t <= self._last_time:
            t = self._last_time + timedelta(microseconds=1)
        self._last_time = t
        return _iso(t)

    def _given_time(self, value: Any, field_name: str) -> str:
        try:
            t = _parse_datetime(value)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(field_errors={field_name: f"Invalid datetime: {value!r}"}) from exc
        self._last_time = max(self._last_time, t)
        return _iso(t)

    # ---------------------------------------------------- statuses and fields

    def _add_status(self, data: Record) -> Record:
        label = data.get("label")
        if not isinstance(label, str) or not label.strip():
            raise ValidationFailed(field_errors={"label": "This field is required."})
        if any(s["label"] == label for s in self._statuses.values()):
            raise ValidationFailed(field_errors={"label": "A status with this label already exists."})
        status_id = data.get("id") or self.new_id("stat")
        status = {
            "id": status_id,
            "label": label,
            "type": data.get("type", "active"),
            "organization_id": ORGANIZATION_ID,
        }
        self._statuses[status_id] = status
        return dict(status)

    def create_status(self, data: Record) -> Record:
        with self._lock:
            return self._add_status(data)

    def statuses(self) -> list[Record]:
        with self._lock:
            return [dict(s) for s in self._statuses.values()]

    def status(self, status_id: str) -> Record:
        with self._lock:
            if status_id not in self._statuses:
                raise NotFound(f"Status {status_id} not found.")
            return dict(self._statuses[status_id])

    def create_custom_field(self, object_type: str, data: Record) -> Record:
        """A regular field of ``object_type``, or (``"shared"``) a shared one, associated with the
        object types its ``associations`` name (more can be added with ``associate``)."""
        if object_type not in FIELD_KINDS:
            raise NotFound(f"No custom fields for object type {object_type!r}.")
        field_errors: dict[str, str] = {}
        if "accepts_multiple" in data:
            field_errors["accepts_multiple"] = "Unknown field; the flag is accepts_multiple_values."
        associations = _associations(data.get("associations") or [], field_errors) if object_type == SHARED else []
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            field_errors["name"] = "This field is required."
        cf_type = data.get("type", "text")
        if cf_type not in CUSTOM_FIELD_TYPES:
            field_errors["type"] = f"Must be one of {', '.join(CUSTOM_FIELD_TYPES)}."
        choices = data.get("choices")
        if cf_type == "choices" and (
            not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)
        ):
            field_errors["choices"] = "A choices field needs a list of strings."
        accepts_multiple = data.get("accepts_multiple_values", False)
        if not isinstance(accepts_multiple, bool):
            field_errors["accepts_multiple_values"] = "Must be a boolean."
        if field_errors:
            raise ValidationFailed(field_errors=field_errors)
        with self._lock:
            fields_ = self._custom_fields[object_type]
            if any(f["name"] == name for f in fields_.values()):
                raise ValidationFailed(field_errors={"name": "A custom field with this name already exists."})
            cf_id = data.get("id") or self.new_id("cf")
            if not isinstance(cf_id, str) or not cf_id.startswith("cf_"):
                raise ValidationFailed(field_errors={"id": "Custom field ids start with cf_."})
            if any(cf_id in self._custom_fields[t] for t in FIELD_KINDS):
                raise ValidationFailed(field_errors={"id": "A custom field with this id already exists."})
            now = self._now()
            cf: Record = {
                "id": cf_id,
                "name": name,
                "type": cf_type,
                "description": data.get("description", ""),
                "accepts_multiple_values": accepts_multiple,
                "choices": list(choices) if cf_type == "choices" else [],
                "organization_id": ORGANIZATION_ID,
                "date_created": now,
                "date_updated": now,
            }
            if object_type == SHARED:
                cf["associations"] = associations
            fields_[cf_id] = cf
            return _copy_field(cf)

    def custom_fields(self, object_type: str) -> list[Record]:
        """The regular fields of an object type (or, for ``"shared"``, the shared fields), oldest first."""
        with self._lock:
            if object_type not in FIELD_KINDS:
                raise NotFound(f"No custom fields for object type {object_type!r}.")
            return [_copy_field(f) for f in self._custom_fields[object_type].values()]

    def schema(self, object_type: str) -> list[Record]:
        """Every field that can be set on an object type, regular then shared, each with ``is_shared``
        (GET /custom_field_schema/{object_type}/)."""
        with self._lock:
            if object_type not in OBJECT_TYPES:
                raise NotFound(f"No custom field schema for object type {object_type!r}.")
            regular = [{**_copy_field(f), "is_shared": False} for f in self._custom_fields[object_type].values()]
            shared = [
                {**_copy_field(f), "is_shared": True}
                for f in self._custom_fields[SHARED].values()
                if any(a["object_type"] == object_type for a in f["associations"])
            ]
            return regular + shared

    def associate(self, cf_id: str, data: Any) -> Record:
        """POST /custom_field/shared/{id}/association/: the shared field can be set on that object type."""
        field_errors: dict[str, str] = {}
        [association] = _associations([data], field_errors) or [None]
        if field_errors or association is None:
            raise ValidationFailed(field_errors=field_errors or {"object_type": "This field is required."})
        with self._lock:
            cf = self._custom_fields[SHARED].get(cf_id)
            if cf is None:
                raise NotFound(f"Shared custom field {cf_id} not found.")
            cf["associations"] = [
                a for a in cf["associations"] if a["object_type"] != association["object_type"]
            ] + [association]
            return dict(association)

    def _defs(self, object_type: str) -> dict[str, Record]:
        """The fields whose values an object type's records may hold: its regular ones and the
        shared ones associated with it."""
        out = dict(self._custom_fields[object_type])
        for cf_id, cf in self._custom_fields[SHARED].items():
            if any(a["object_type"] == object_type for a in cf["associations"]):
                out[cf_id] = cf
        return out

    def field_types(self) -> dict[str, set[str]]:
        """Custom field id -> the object types it can be set on (several for a shared field)."""
        with self._lock:
            out: dict[str, set[str]] = {}
            for object_type in OBJECT_TYPES:
                for cf_id in self._defs(object_type):
                    out.setdefault(cf_id, set()).add(object_type)
            return out

    def text_fields(self) -> set[str]:
        """Ids of the custom fields that hold free text."""
        with self._lock:
            return {
                cf_id
                for kind in FIELD_KINDS
                for cf_id, cf in self._custom_fields[kind].items()
                if cf["type"] in TEXT_TYPES
            }

    def custom_field(self, object_type: str, cf_id: str) -> Record:
        with self._lock:
            cf = self._custom_fields.get(object_type, {}).get(cf_id)
            if cf is None:
                raise NotFound(f"Custom field {cf_id} not found.")
            return _copy_field(cf)

    def delete_custom_field(self, object_type: str, cf_id: str) -> None:
        with self._current():
            if cf_id not in self._custom_fields.get(object_type, {}):
                raise NotFound(f"Custom field {cf_id} not found.")
            del self._custom_fields[object_type][cf_id]
            for records in (self._leads, self._contacts):
                for record in records.values():
                    record["custom"].pop(cf_id, None)

    # ------------------------------------------------------------------ leads

    def create_lead(self, data: Record, *, trusted: bool = False) -> Record:
        """POST /lead/: nested contacts are created in the same call. ``trusted`` (seeding) allows ids and dates."""
        if not isinstance(data, dict):
            raise ValidationFailed(["Expected a JSON object."])
        with self._current():
            fields_ = self._validate_lead(data, partial=False)
            contacts_data = data.get("contacts") or []
            if not isinstance(contacts_data, list) or not all(isinstance(c, dict) for c in contacts_data):
                raise ValidationFailed(field_errors={"contacts": "Must be a list of contact objects."})
            contact_fields = []
            for i, c in enumerate(contacts_data):
                try:
                    contact_fields.append(self._validate_contact(c, partial=False))
                except ValidationFailed as exc:
                    raise ValidationFailed(exc.errors, {"contacts": {str(i): exc.field_errors}}) from None
            lead_id = self._explicit_id(data, "lead", self._leads) if trusted else self.new_id("lead")
            created = (
                self._given_time(data["date_created"], "date_created")
                if trusted and data.get("date_created")
                else self._now()
            )
            updated = (
                self._given_time(data["date_updated"], "date_updated")
                if trusted and data.get("date_updated")
                else created
            )
            lead: Record = {
                "id": lead_id,
                "name": None,
                "description": "",
                "url": None,
                "status_id": next(iter(self._statuses)),
                "custom": {},
                "contact_ids": [],
                "date_created": created,
                "date_updated": updated,
            }
            _apply(lead, fields_)
            self._leads[lead_id] = lead
            for c_data, c_fields in zip(contacts_data, contact_fields, strict=True):
                self._insert_contact(lead, c_data, c_fields, trusted=trusted)
            self._publish("lead", lead_id)
            return self._render_lead(lead)

    def get_lead(self, lead_id: str) -> Record:
        with self._current():
            return self._render_lead(self._lead(lead_id))

    def update_lead(self, lead_id: str, data: Record) -> Record:
        if not isinstance(data, dict):
            raise ValidationFailed(["Expected a JSON object."])
        with self._current():
            lead = self._lead(lead_id)
            if "contacts" in data:
                raise ValidationFailed(
                    field_errors={
                        "contacts": "Contacts cannot be updated through PUT /lead/; use /contact/ endpoints."
                    }
                )
            fields_ = self._validate_lead(data, partial=True)
            _apply(lead, fields_)
            lead["date_updated"] = self._now()
            self._publish("lead", lead_id)
            return self._render_lead(lead)

    def delete_lead(self, lead_id: str) -> None:
        with self._current():
            lead = self._lead(lead_id)
            for contact_id in lead["contact_ids"]:
                del self._contacts[contact_id]
                self._publish("contact", contact_id)
            del self._leads[lead_id]
            self._publish("lead", lead_id)

    def list_leads(self, skip: int, limit: int, descending: bool = True) -> tuple[list[Record], int]:
        with self._current():
            ordered = sorted(
                self._leads.values(), key=lambda r: (r["date_created"], r["id"]), reverse=descending
            )
            return [self._render_lead(r) for r in ordered[skip : skip + limit]], len(ordered)

    def leads(self) -> list[Record]:
        """Every lead with nested contacts, oldest first."""
        with self._current():
            ordered = sorted(self._leads.values(), key=lambda r: (r["date_created"], r["id"]))
            return [self._render_lead(r) for r in ordered]

    def _lead(self, lead_id: str) -> Record:
        lead = self._leads.get(lead_id)
        if lead is None:
            raise NotFound(f"Lead {lead_id} not found.")
        return lead

    def _validate_lead(self, data: Record, partial: bool) -> Record:
        out: Record = {}
        field_errors: dict[str, Any] = {}
        for key in ("name", "description", "url"):
            if key in data:
                value = data[key]
                if value is not None and not isinstance(value, str):
                    field_errors[key] = "Not a valid string."
                else:
                    out[key] = value if key != "description" else (value or "")
        if "status_id" in data or "status_label" in data:
            status_id = data.get("status_id")
            if status_id is None and data.get("status_label") is not None:
                match = [s["id"] for s in self._statuses.values() if s["label"] == data["status_label"]]
                if not match:
                    field_errors["status_label"] = f"Unknown status label {data['status_label']!r}."
                else:
                    out["status_id"] = match[0]
            elif status_id not in self._statuses:
                field_errors["status_id"] = f"Status {status_id!r} does not exist."
            else:
                out["status_id"] = status_id
        custom = self._validate_custom("lead", data, field_errors)
        if field_errors:
            raise ValidationFailed(field_errors=field_errors)
        if custom:
            out["custom"] = custom
        return out

    # --------------------------------------------------------------- contacts

    def create_contact(self, data: Record) -> Record:
        """POST /contact/: with lead_id it joins that lead, without one a new lead is created for it."""
        if not isinstance(data, dict):
            raise ValidationFailed(["Expected a JSON object."])
        with self._current():
            fields_ = self._validate_contact(data, partial=False)
            lead_id = data.get("lead_id")
            if lead_id is not None:
                if lead_id not in self._leads:
                    raise ValidationFailed(field_errors={"lead_id": f"Lead {lead_id!r} does not exist."})
                lead = self._leads[lead_id]
            else:
                now = self._now()
                lead = {
                    "id": self.new_id("lead"),
                    "name": fields_.get("name"),
                    "description": "",
                    "url": None,
                    "status_id": next(iter(self._statuses)),
                    "custom": {},
                    "contact_ids": [],
                    "date_created": now,
                    "date_updated": now,
                }
                self._leads[lead["id"]] = lead
            contact = self._insert_contact(lead, data, fields_, trusted=False)
            self._publish("lead", lead["id"])
            return self._render_contact(contact)

    def _insert_contact(self, lead: Record, data: Record, fields_: Record, *, trusted: bool) -> Record:
        contact_id = self._explicit_id(data, "cont", self._contacts) if trusted else self.new_id("cont")
        created = (
            self._given_time(data["date_created"], "date_created")
            if trusted and data.get("date_created")
            else self._now()
        )
        updated = (
            self._given_time(data["date_updated"], "date_updated")
            if trusted and data.get("date_updated")
            else created
        )
        contact: Record = {
            "id": contact_id,
            "lead_id": lead["id"],
            "name": None,
            "title": None,
            "emails": [],
            "phones": [],
            "urls": [],
            "custom": {},
            "date_created": created,
            "date_updated": updated,
        }
        _apply(contact, fields_)
        self._contacts[contact_id] = contact
        lead["contact_ids"].append(contact_id)
        self._publish("contact", contact_id)
        return contact

    def get_contact(self, contact_id: str) -> Record:
        with self._current():
            return self._render_contact(self._contact(contact_id))

    def update_contact(self, contact_id: str, data: Record) -> Record:
        if not isinstance(data, dict):
            raise ValidationFailed(["Expected a JSON object."])
        with self._current():
            contact = self._contact(contact_id)
            fields_ = self._validate_contact(data, partial=True)
            new_lead_id = data.get("lead_id")
            if "lead_id" in data and new_lead_id != contact["lead_id"]:
                if new_lead_id not in self._leads:
                    raise ValidationFailed(field_errors={"lead_id": f"Lead {new_lead_id!r} does not exist."})
                old_lead = self._leads[contact["lead_id"]]
                old_lead["contact_ids"].remove(contact_id)
                self._leads[new_lead_id]["contact_ids"].append(contact_id)
                contact["lead_id"] = new_lead_id
                self._publish("lead", old_lead["id"])
            _apply(contact, fields_)
            contact["date_updated"] = self._now()
            self._publish("contact", contact_id)
            self._publish("lead", contact["lead_id"])
            return self._render_contact(contact)

    def delete_contact(self, contact_id: str) -> None:
        with self._current():
            contact = self._contact(contact_id)
            lead = self._leads[contact["lead_id"]]
            lead["contact_ids"].remove(contact_id)
            del self._contacts[contact_id]
            self._publish("contact", contact_id)
            self._publish("lead", lead["id"])

    def list_contacts(self, lead_id: str | None, skip: int, limit: int) -> tuple[list[Record], int]:
        with self._current():
            if lead_id is not None:
                pool = (
                    [self._contacts[c] for c in self._leads[lead_id]["contact_ids"]]
                    if lead_id in self._leads
                    else []
                )
            else:
                pool = list(self._contacts.values())
            ordered = sorted(pool, key=lambda r: (r["date_created"], r["id"]))
            return [self._render_contact(r) for r in ordered[skip : skip + limit]], len(ordered)

    def contacts(self) -> list[Record]:
        """Every contact, oldest first."""
        with self._current():
            ordered = sorted(self._contacts.values(), key=lambda r: (r["date_created"], r["id"]))
            return [self._render_contact(r) for r in ordered]

    def _contact(self, contact_id: str) -> Record:
        contact = self._contacts.get(contact_id)
        if contact is None:
            raise NotFound(f"Contact {contact_id} not found.")
        return contact

    def _validate_contact(self, data: Record, partial: bool) -> Record:
        out: Record = {}
        field_errors: dict[str, Any] = {}
        for key in ("name", "title"):
            if key in data:
                value = data[key]
                if value is not None and not isinstance(value, str):
                    field_errors[key] = "Not a valid string."
                else:
                    out[key] = value
        if "emails" in data:
            out["emails"] = _validate_list(data["emails"], "email", _check_email, field_errors, "emails")
        if "phones" in data:
            out["phones"] = _validate_list(data["phones"], "phone", _check_phone, field_errors, "phones")
        if "urls" in data:
            out["urls"] = _validate_list(data["urls"], "url", _check_url, field_errors, "urls")
        custom = self._validate_custom("contact", data, field_errors)
        if field_errors:
            raise ValidationFailed(field_errors=field_errors)
        if custom:
            out["custom"] = custom
        return out

    # ------------------------------------------------------------------ merges

    def merge_leads(self, data: Any) -> str:
        """POST /lead/merge/: the source lead's contacts, and the name, description, url and custom
        field values the destination lacks, move to the destination; then the source is deleted.

        Returns the merge status: "completed", or "in_progress" when ``config.merge_delay_seconds``
        > 0, in which case nothing changes until that delay has passed. Both leads must exist when
        the merge is asked for; one gone by the time it is due makes it "failed", changing nothing.
        """
        if not isinstance(data, dict):
            raise ValidationFailed(["Expected a JSON object."])
        field_errors: dict[str, str] = {}
        for key in ("source", "destination"):
            value = data.get(key)
            if value is None:
                field_errors[key] = "This field is required."
            elif not isinstance(value, str):
                field_errors[key] = "Not a valid string."
        if field_errors:
            raise ValidationFailed(field_errors=field_errors)
        source_id, destination_id = data["source"], data["destination"]
        if source_id == destination_id:
            raise ValidationFailed(["A lead cannot be merged into itself (source equals destination)."])
        with self._current():
            self._lead(source_id)
            self._lead(destination_id)
            merge: Record = {
                "source": source_id,
                "destination": destination_id,
                "merge_status": "in_progress",
                "date_created": self._now(),
                "activity_id": self.new_id("acti"),
                "date_completed": None,
            }
            self._merges.append(merge)
            now = time.monotonic()
            delay = self.config.merge_delay_seconds
            if delay > 0:
                heapq.heappush(self._merge_queue, (now + delay, len(self._merges), merge))
            else:
                self._apply_merge(merge, now)
            return str(merge["merge_status"])

    def merges(self) -> list[Record]:
        """Every merge asked for since the last reset, oldest first, with its status."""
        with self._current():
            return [dict(m) for m in self._merges]

    def lead_merge_activities(self, lead_id: str | None) -> list[Record]:
        """GET /activity/lead_merge/: one LeadMerge activity per merge, on the destination lead,
        newest first; ``merge_status`` shows its progress."""
        with self._current():
            out = [
                {
                    "id": merge["activity_id"],
                    "_type": "LeadMerge",
                    "lead_id": merge["destination"],
                    "source_lead_id": merge["source"],
                    "destination_lead_id": merge["destination"],
                    "merge_status": merge["merge_status"],
                    "organization_id": ORGANIZATION_ID,
                    "user_id": USER_ID,
                    "date_created": merge["date_created"],
                }
                for merge in reversed(self._merges)
                if lead_id is None or merge["destination"] == lead_id
            ]
            return out

    def _settle_merges(self) -> None:
        now = time.monotonic()
        while self._merge_queue and self._merge_queue[0][0] <= now:
            due, _, merge = heapq.heappop(self._merge_queue)
            self._apply_merge(merge, due)

    def _apply_merge(self, merge: Record, at: float) -> None:
        source = self._leads.get(merge["source"])
        destination = self._leads.get(merge["destination"])
        if source is None or destination is None:
            merge["merge_status"] = "failed"
            return
        now = self._now()
        for contact_id in source["contact_ids"]:
            contact = self._contacts[contact_id]
            contact["lead_id"] = destination["id"]
            contact["date_updated"] = now
            destination["contact_ids"].append(contact_id)
            self._publish("contact", contact_id, at)
        for cf_id, value in source["custom"].items():
            destination["custom"].setdefault(cf_id, value)
        for key in ("name", "description", "url"):
            if not destination[key] and source[key]:
                destination[key] = source[key]
        destination["date_updated"] = now
        del self._leads[source["id"]]
        self._publish("lead", destination["id"], at)
        self._publish("lead", source["id"], at)
        merge["merge_status"] = "completed"
        merge["date_completed"] = now

    # ---------------------------------------------------------- custom values

    def _validate_custom(
        self, object_type: str, data: Record, field_errors: dict[str, Any]
    ) -> dict[str, Any]:
        """Collect `custom.cf_…` keys (and a `custom` object keyed by id or name); None means unset."""
        defs = self._defs(object_type)
        by_name = {f["name"]: f["id"] for f in defs.values()}
        raw: dict[str, tuple[str, Any]] = {}
        nested = data.get("custom")
        if nested is not None:
            if not isinstance(nested, dict):
                field_errors["custom"] = "Must be an object."
            else:
                for key, value in nested.items():
                    raw[by_name.get(key, key)] = (f"custom.{key}", value)
        for key, value in data.items():
            if key.startswith("custom."):
                raw[key[len("custom.") :]] = (key, value)
        out: dict[str, Any] = {}
        for cf_id, (error_key, value) in raw.items():
            cf = defs.get(cf_id)
            if cf is None:
                field_errors[error_key] = f"Unknown {object_type} custom field {cf_id!r}."
                continue
            try:
                out[cf_id] = None if value is None else _coerce_custom(cf, value)
            except ValueError as exc:
                field_errors[error_key] = str(exc)
        return out

    # ----------------------------------------------------------------- render

    def _render_contact(self, c: Record) -> Record:
        first_email = c["emails"][0]["email"] if c["emails"] else ""
        out: Record = {
            "id": c["id"],
            "lead_id": c["lead_id"],
            "organization_id": ORGANIZATION_ID,
            "name": c["name"],
            "title": c["title"],
            "display_name": c["name"] or first_email,
            "emails": [dict(e) for e in c["emails"]],
            "phones": [dict(p) for p in c["phones"]],
            "urls": [dict(u) for u in c["urls"]],
            "date_created": c["date_created"],
            "date_updated": c["date_updated"],
            "created_by": USER_ID,
            "updated_by": USER_ID,
            "integration_links": [],
        }
        for cf_id, value in c["custom"].items():
            out[f"custom.{cf_id}"] = list(value) if isinstance(value, list) else value
        return out

    def _render_lead(self, lead: Record, with_contacts: bool = True) -> Record:
        contacts = [self._render_contact(self._contacts[c]) for c in lead["contact_ids"]]
        status = self._statuses.get(lead["status_id"], {})
        display = lead["name"] or (contacts[0]["display_name"] if contacts else "")
        defs = self._defs("lead")
        out: Record = {
            "id": lead["id"],
            "organization_id": ORGANIZATION_ID,
            "name": lead["name"],
            "display_name": display,
            "description": lead["description"],
            "url": lead["url"],
            "status_id": lead["status_id"],
            "status_label": status.get("label"),
            "contact_ids": list(lead["contact_ids"]),
            "addresses": [],
            "opportunities": [],
            "tasks": [],
            "html_url": f"https://app.close.com/lead/{lead['id']}/",
            "date_created": lead["date_created"],
            "date_updated": lead["date_updated"],
            "created_by": USER_ID,
            "updated_by": USER_ID,
            "custom": {defs[k]["name"]: v for k, v in lead["custom"].items() if k in defs},
        }
        if with_contacts:
            out["contacts"] = contacts
        for cf_id, value in lead["custom"].items():
            out[f"custom.{cf_id}"] = list(value) if isinstance(value, list) else value
        return out

    # ----------------------------------------------------------- search index

    def _publish(self, object_type: str, object_id: str, at: float | None = None) -> None:
        """Queue the search index's view of a record; it becomes visible search_lag seconds after
        the write (``at``, a time.monotonic() value, for a write that took effect earlier: a due merge)."""
        if object_type == "lead":
            record = self._leads.get(object_id)
            doc = self._render_lead(record, with_contacts=False) if record else None
        else:
            record = self._contacts.get(object_id)
            doc = self._render_contact(record) if record else None
        lag = self.config.search_lag
        if lag <= 0 and not self._pending:
            self._index_put(object_type, object_id, doc)
        else:
            written = time.monotonic() if at is None else at
            self._pending.append((written + lag, object_type, object_id, doc))

    def _index_put(self, object_type: str, object_id: str, doc: Record | None) -> None:
        old = self._index[object_type].get(object_id)
        if doc is None:
            self._index[object_type].pop(object_id, None)
        else:
            self._index[object_type][object_id] = doc
        self._terms.put(object_type, object_id, old, doc)

    def search(self, run: Callable[[dict[str, Record], dict[str, Record], TermIndex], Any]) -> Any:
        """Call ``run(leads, contacts, terms)`` on the index as search sees it now (documents keyed by id,
        and their ids by indexed term).

        It runs under the store's lock, so it sees a consistent index without copying it.
        """
        with self._current():
            now = time.monotonic()
            while self._pending and self._pending[0][0] <= now:
                _, object_type, object_id, doc = self._pending.popleft()
                self._index_put(object_type, object_id, doc)
            return run(self._index["lead"], self._index["contact"], self._terms)

    # --------------------------------------------------------- seed, snapshot

    def seed(self, data: Record) -> None:
        """Load `{"custom_fields": {"lead": [...], "contact": [...]}, "statuses": [...], "leads": [...]}`.

        Seeded custom fields, statuses, leads and contacts may carry their own ids (``cf_…``,
        ``stat_…``, ``lead_…``, ``cont_…``), so a config naming them works against a fresh simulator.
        """
        _check_seed_shape(data)
        with self._current():
            statuses = data.get("statuses")
            if statuses:
                self._statuses = {}
                for status in statuses:
                    self._add_status(status)
            kinds = data.get("custom_fields") or {}
            for object_type in sorted(kinds, key=FIELD_KINDS.index):
                for cf in kinds[object_type]:
                    if cf.get("id") in self._custom_fields.get(object_type, {}):
                        continue
                    self.create_custom_field(object_type, cf)
            for lead in data.get("leads") or []:
                self.create_lead(lead, trusted=True)

    def snapshot(self) -> Record:
        """The whole organisation in the seed's shape, so a snapshot can seed a new simulator."""
        with self._current():
            return {
                "custom_fields": {t: self.custom_fields(t) for t in FIELD_KINDS},
                "statuses": self.statuses(),
                "leads": self.leads(),
            }

    def counts(self) -> dict[str, int]:
        with self._current():
            return {"leads": len(self._leads), "contacts": len(self._contacts)}

    def _explicit_id(self, data: Record, prefix: str, existing: dict[str, Record]) -> str:
        given = data.get("id")
        if given is None:
            return self.new_id(prefix)
        if not isinstance(given, str) or not given.startswith(prefix + "_"):
            raise ValidationFailed(field_errors={"id": f"Ids of this object start with {prefix}_."})
        if given in existing:
            raise ValidationFailed(field_errors={"id": f"{given} already exists."})
        return given


# --------------------------------------------------------------------- helpers

SEED_KEYS = ("custom_fields", "statuses", "leads")


def _check_seed_shape(data: Any) -> None:
    """The seed's top level, before anything is loaded: a misspelled key would otherwise load nothing."""
    if not isinstance(data, dict):
        raise ValidationFailed([f"Seed must be a JSON object with keys {', '.join(SEED_KEYS)}."])
    unknown = sorted(set(data) - set(SEED_KEYS))
    if unknown:
        raise ValidationFailed([f"Unknown seed key(s) {', '.join(unknown)}; the keys are {', '.join(SEED_KEYS)}."])
    fields_ = data.get("custom_fields") or {}
    if not isinstance(fields_, dict) or set(fields_) - set(FIELD_KINDS):
        raise ValidationFailed(['custom_fields must be {"lead": [...], "contact": [...], "shared": [...]}.'])
    for key, value in [("statuses", data.get("statuses")), ("leads", data.get("leads")), *fields_.items()]:
        if value is not None and not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise ValidationFailed([f"{key} must be a list of objects."])



def _copy_field(cf: Record) -> Record:
    out = dict(cf)
    if "associations" in cf:
        out["associations"] = [dict(a) for a in cf["associations"]]
    return out


def _associations(items: list[Any], field_errors: dict[str, str]) -> list[Record]:
    """A shared field's associations, each ``{"object_type": "lead"|"contact", "required",
    "editable_with_roles"}``."""
    out: list[Record] = []
    for item in items:
        object_type = item.get("object_type") if isinstance(item, dict) else None
        if object_type not in OBJECT_TYPES:
            field_errors["associations"] = f"object_type must be one of {', '.join(OBJECT_TYPES)}."
            continue
        out.append(
            {
                "object_type": object_type,
                "required": bool(item.get("required", False)),
                "editable_with_roles": list(item.get("editable_with_roles") or []),
            }
        )
    return out


def _apply(record: Record, fields_: Record) -> None:
    for key, value in fields_.items():
        if key == "custom":
            for cf_id, cf_value in value.items():
                if cf_value is None:
                    record["custom"].pop(cf_id, None)
                else:
                    record["custom"][cf_id] = cf_value
        else:
            record[key] = value


def _validate_list(value: Any, key: str, check: Any, field_errors: dict[str, Any], name: str) -> list[Record]:
    if value is None:
        return []
    if not isinstance(value, list):
        field_errors[name] = "Must be a list."
        return []
    out: list[Record] = []
    errors: dict[str, str] = {}
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            errors[str(i)] = f"Each item must be an object with a string {key!r}."
            continue
        item_type = item.get("type", DEFAULT_TYPE)
        if not isinstance(item_type, str):
            errors[str(i)] = "type must be a string."
            continue
        try:
            out.append({**check(item[key]), "type": item_type or DEFAULT_TYPE})
        except ValueError as exc:
            errors[str(i)] = str(exc)
    if errors:
        field_errors[name] = errors
    return out


def _check_email(value: str) -> Record:
    if not email_ok(value):
        raise ValueError(f"{value!r} is not a valid email address.")
    return {"email": value.strip()}


def _check_phone(value: str) -> Record:
    fields = phone_fields(value)
    if fields is None:
        raise ValueError(f"{value!r} is not a valid phone number.")
    return dict(fields)


def _check_url(value: str) -> Record:
    if not value.strip():
        raise ValueError("URL must not be empty.")
    return {"url": value.strip()}


def _coerce_custom(cf: Record, value: Any) -> Any:
    if cf["accepts_multiple_values"]:
        values = value if isinstance(value, list) else [value]
        return [_coerce_one(cf, v) for v in values]
    if isinstance(value, list):
        raise ValueError(f"Custom field {cf['name']!r} accepts a single value, not a list.")
    return _coerce_one(cf, value)


def _coerce_one(cf: Record, value: Any) -> Any:
    cf_type = cf["type"]
    if isinstance(value, dict | list) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a valid {cf_type} value for {cf['name']!r}.")
    if cf_type in ("text", "textarea", "hidden"):
        return value if isinstance(value, str) else str(value)
    if cf_type == "number":
        if isinstance(value, int | float):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number.") from None
        return int(number) if number.is_integer() and "." not in value else number
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a valid {cf_type} value for {cf['name']!r}.")
    if cf_type == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD).") from None
        return value
    if cf_type == "datetime":
        try:
            return _iso(_parse_datetime(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 datetime.") from None
    if cf_type == "choices" and value not in cf["choices"]:
        raise ValueError(f"{value!r} is not one of the choices of {cf['name']!r}.")
    return value


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("datetime must be a string")
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")
