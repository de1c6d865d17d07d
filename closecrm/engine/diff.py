"""What a request wants written onto a lead or a contact, and how that differs from what Close holds."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from closecrm.events.normalize import email_key, phone_key, to_e164, url_key
from closecrm.model import Settings, UpsertRequest

Record = dict[str, Any]

# (request attribute, Close list key, item key, comparison key)
LISTS = (
    ("contact_emails", "emails", "email", email_key),
    ("contact_phones", "phones", "phone", phone_key),
    ("contact_urls", "urls", "url", url_key),
)
DEFAULT_ITEM_TYPE = {"emails": "office", "phones": "office", "urls": "url"}


@lru_cache(maxsize=1024)  # a handful of field ids: every body and change names them with one string
def cf_key(cf_id: str) -> str:
    """`cf_x` or `custom.cf_x` -> the top-level key Close reads and writes: `custom.cf_x`."""
    return cf_id if cf_id.startswith("custom.") else f"custom.{cf_id}"


def company_id_of(req: UpsertRequest, settings: Settings) -> str | None:
    """The request's company id, only when the company-id custom field is configured."""
    if settings.lead_custom_field_id_for_company_id and req.lead_company_id:
        return str(req.lead_company_id)
    return None


def user_id_of(req: UpsertRequest, settings: Settings) -> str | None:
    if settings.contact_custom_field_id_for_user_id and req.contact_user_id:
        return str(req.contact_user_id)
    return None


def has_contact_fields(req: UpsertRequest, settings: Settings) -> bool:
    """Contact fields the engine can write (a user id counts only when its custom field is configured)."""
    return bool(
        req.contact_name
        or req.contact_emails
        or req.contact_phones
        or req.contact_urls
        or req.contact_title
        or user_id_of(req, settings)
        or req.contact_custom_fields
    )


def same_value(current: Any, wanted: Any) -> bool:
    """Close coerces custom values (a number into a text field becomes a string)."""
    if current == wanted:
        return True
    if (
        current is None
        or wanted is None
        or isinstance(current, list | dict)
        or isinstance(wanted, list | dict)
    ):
        return False
    return str(current) == str(wanted)


def lead_scalars(req: UpsertRequest, settings: Settings, *, with_company_id: bool) -> Record:
    out: Record = {}
    if req.lead_name:
        out["name"] = req.lead_name
    if req.lead_description:
        out["description"] = req.lead_description
    if req.lead_status_id:
        out["status_id"] = req.lead_status_id
    for cf, value in req.lead_custom_fields.items():
        if value is not None and value != "":
            out[cf_key(cf)] = value
    company_id = company_id_of(req, settings)
    if with_company_id and company_id:
        out[cf_key(settings.lead_custom_field_id_for_company_id)] = company_id
    return out


def contact_scalars(req: UpsertRequest, settings: Settings) -> Record:
    out: Record = {}
    if req.contact_name:
        out["name"] = req.contact_name
    if req.contact_title:
        out["title"] = req.contact_title
    for cf, value in req.contact_custom_fields.items():
        if value is not None and value != "":
            out[cf_key(cf)] = value
    user_id = user_id_of(req, settings)
    if user_id:
        out[cf_key(settings.contact_custom_field_id_for_user_id)] = user_id
    return out


def _item_value(list_key: str, value: str) -> str:
    if list_key == "phones":
        return to_e164(value) or value.strip()
    return value.strip()


def merged_list(
    existing: list[Record] | None, new_values: tuple[str, ...], list_key: str
) -> list[Record] | None:
    """Existing items plus the new values not already present; None when nothing is added."""
    _, _, item_key, keyfn = next(spec for spec in LISTS if spec[1] == list_key)
    current = [dict(i) for i in existing or [] if isinstance(i, dict)]
    seen = {keyfn(str(i.get(item_key, ""))) for i in current}
    added = False
    for value in new_values:
        if not value or not str(value).strip():
            continue
        k = keyfn(str(value))
        if k in seen:
            continue
        seen.add(k)
        current.append({item_key: _item_value(list_key, str(value)), "type": DEFAULT_ITEM_TYPE[list_key]})
        added = True
    if not added:
        return None
    # Send only what Close accepts back (drops read-only extras such as phone_formatted).
    return [{item_key: i[item_key], "type": i.get("type") or DEFAULT_ITEM_TYPE[list_key]} for i in current]


def lead_update(current: Record, req: UpsertRequest, settings: Settings, *, with_company_id: bool) -> Record:
    """The partial PUT body for a lead: only fields whose value differs."""
    wanted = lead_scalars(req, settings, with_company_id=with_company_id)
    return {k: v for k, v in wanted.items() if not same_value(current.get(k), v)}


def contact_scalar_update(current: Record, req: UpsertRequest, settings: Settings) -> Record:
    wanted = contact_scalars(req, settings)
    return {k: v for k, v in wanted.items() if not same_value(current.get(k), v)}


def contact_list_update(current: Record, req: UpsertRequest) -> Record:
    """Full merged lists for every list the request adds to (Close's PUT replaces whole arrays)."""
    out: Record = {}
    for attr, list_key, _, _ in LISTS:
        merged = merged_list(current.get(list_key), getattr(req, attr), list_key)
        if merged is not None:
            out[list_key] = merged
    return out


def new_contact(req: UpsertRequest, settings: Settings) -> Record:
    body = contact_scalars(req, settings)
    for attr, list_key, _, _ in LISTS:
        merged = merged_list([], getattr(req, attr), list_key)
        if merged:
            body[list_key] = merged
    return body


def new_lead(req: UpsertRequest, settings: Settings, *, with_contact: bool) -> Record:
    body = lead_scalars(req, settings, with_company_id=True)
    if "status_id" not in body and settings.default_lead_status_id:
        body["status_id"] = settings.default_lead_status_id
    if with_contact:
        body["contacts"] = [new_contact(req, settings)]
    return body


def field_changes(
    obj: str, obj_id: str | None, action: str, current: Record, body: Record, *, nested: bool = False
) -> list[Record]:
    """One change record per field, for outcomes and dry runs (``nested``: marked as a nested create's)."""
    mark = {"nested": True} if nested else {}
    return [
        {"object": obj, "id": obj_id, "action": action, "field": k, "old": current.get(k), "new": v, **mark}
        for k, v in body.items()
        if k != "contacts"
    ]
