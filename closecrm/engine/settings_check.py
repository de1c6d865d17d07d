"""The destination settings checked against the Close organisation, failing fast with the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from closecrm.api.client import CloseAPIError, CloseClient
from closecrm.engine.definitions import custom_field_definitions
from closecrm.model import Settings

Record = dict[str, Any]


class SettingsError(Exception):
    """The destination settings do not work against this Close organisation; the message says how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# (where it is named, what it is, id): what else a config names in Close, e.g. a mapping's custom
# field ("mappings[0].fields.lead_custom_fields.cf_x", "lead custom field", "cf_x") or its status
# (..., "lead status", "stat_x"). Close answers 400 to every request that names a wrong one.
Reference = tuple[str, str, str]


async def check_settings(
    client: CloseClient, settings: Settings, references: Sequence[Reference] = ()
) -> dict[str, set[str]]:
    """Raise SettingsError naming each setting (and each of ``references``) that does not work and its
    fix; else return the organisation's custom field ids per object type ("lead", "contact")."""
    await _check_api_key(client)
    fields_by_type: dict[str, dict[str, Record]] = {}
    for object_type in ("lead", "contact"):
        definitions = await custom_field_definitions(client, object_type)
        fields_by_type[object_type] = {f["id"]: f for f in definitions}
    problems = _custom_field_problems(settings, fields_by_type)
    problems += _reference_field_problems(references, fields_by_type)
    problems += await _status_problems(client, settings, references)
    if problems:
        raise SettingsError(problems)
    return {object_type: set(found) for object_type, found in fields_by_type.items()}


async def _check_api_key(client: CloseClient) -> None:
    try:
        await client.get("me/")
    except CloseAPIError as exc:
        if exc.status in (401, 403):
            raise SettingsError(
                [
                    f"API key: Close rejected it (HTTP {exc.status}). Fix: set CLOSE_API_KEY (or api_key_file) "
                    "to a valid key from Close > Settings > Developer > API Keys."
                ]
            ) from None
        raise SettingsError(
            [f"API key: could not check it, GET /me/ failed ({exc.status}): {exc.body!r}"]
        ) from None


def _custom_field_problems(settings: Settings, fields_by_type: dict[str, dict[str, Record]]) -> list[str]:
    problems: list[str] = []
    wanted = (
        ("lead_custom_field_id_for_company_id", settings.lead_custom_field_id_for_company_id, "lead"),
        ("contact_custom_field_id_for_user_id", settings.contact_custom_field_id_for_user_id, "contact"),
    )
    for setting, cf_id, object_type in wanted:
        if not cf_id:
            continue
        cf_id = cf_id.removeprefix("custom.")
        other = "contact" if object_type == "lead" else "lead"
        found = fields_by_type[object_type].get(cf_id)
        if found is None and cf_id in fields_by_type[other]:
            problems.append(
                f"{setting}: {cf_id} is a {other} custom field, but it must be a {object_type} custom field. "
                f"Fix: create a text {object_type} custom field and put its id (cf_…) here."
            )
        elif found is None:
            problems.append(
                f"{setting}: no {object_type} custom field {cf_id} exists in this organisation. "
                f"Fix: copy the id (cf_…) of a text {object_type} custom field from Close, or leave it empty."
            )
        elif found.get("type") != "text":
            problems.append(
                f"{setting}: {cf_id} ({found.get('name')!r}) is of type {found.get('type')!r}, not 'text'. "
                f"Fix: use a text {object_type} custom field."
            )
    return problems


def _reference_field_problems(
    references: Sequence[Reference], fields_by_type: dict[str, dict[str, Record]]
) -> list[str]:
    problems: list[str] = []
    for where, what, cf_id in references:
        if not what.endswith("custom field"):
            continue
        object_type = what.split()[0]
        other = "contact" if object_type == "lead" else "lead"
        if cf_id in fields_by_type[object_type]:
            continue
        if cf_id in fields_by_type[other]:
            problems.append(
                f"{where}: {cf_id} is a {other} custom field, not a {object_type} one. "
                f"Fix: move it to {other}_custom_fields, or use the id of a {object_type} custom field."
            )
        else:
            problems.append(
                f"{where}: no {object_type} custom field {cf_id} exists in this organisation. "
                f"Fix: create it in Close (Settings > Custom Fields) or copy the id (cf_…) of an existing one."
            )
    return problems


async def _status_problems(
    client: CloseClient, settings: Settings, references: Sequence[Reference] = ()
) -> list[str]:
    wanted = [("default_lead_status_id", settings.default_lead_status_id)] if settings.default_lead_status_id else []
    wanted += [(where, status_id) for where, what, status_id in references if what == "lead status"]
    if not wanted:
        return []
    statuses = await client.get("status/lead/")
    known = {s.get("id") for s in statuses.get("data") or []}
    return [
        f"{where}: no lead status {status_id} exists. "
        "Fix: use an id from GET /status/lead/ (stat_…), or leave it empty."
        for where, status_id in wanted
        if status_id not in known
    ]
