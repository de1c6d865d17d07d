"""The custom fields that can be set on leads and contacts: regular and shared ones alike.

Close's per-type lists (``/custom_field/lead/``, ``/custom_field/contact/``) hold only *regular*
fields; a shared field (``/custom_field/shared/``) is usable on every object type it is associated
with. The Custom Field Schema (``GET /custom_field_schema/{lead|contact}/``) lists both kinds for one
object type in one answer (``{"fields": [...]}``), so that is what is read. Should it ever answer a
paged list instead (``data`` and ``has_more``), the pages are followed with ``_skip``/``_limit``.
"""

from __future__ import annotations

from typing import Any

from closecrm.api.client import CloseClient

Record = dict[str, Any]
PAGE = 100  # Close's default (and the simulator's largest) page of a definition list
MAX_PAGES = 1_000  # a listing that never ends is a bug on the other side, not a reason to loop forever


async def custom_field_definitions(client: CloseClient, object_type: str) -> list[Record]:
    """Every custom field (regular and shared) that can be set on ``object_type`` ("lead", "contact")."""
    path = f"custom_field_schema/{object_type}/"
    answer = await client.get(path)
    if isinstance(answer, dict) and isinstance(answer.get("fields"), list):
        return [f for f in answer["fields"] if isinstance(f, dict) and f.get("id")]
    out: list[Record] = []
    for _ in range(MAX_PAGES):
        data = [f for f in (answer or {}).get("data") or [] if isinstance(f, dict) and f.get("id")]
        out.extend(data)
        if not (answer or {}).get("has_more") or not data:
            break
        answer = await client.get(path, params={"_skip": len(out), "_limit": PAGE})
    return out

