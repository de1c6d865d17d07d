"""Which writer key a request goes to: every request that may touch the same lead shares one."""

from __future__ import annotations

import hashlib
from typing import Any

import apache_beam as beam

from closecrm.model import UpsertRequest


def lead_identity(request: UpsertRequest) -> str:
    """What decides which lead a request may touch: company id, else user id, else email."""
    if request.lead_company_id:
        return "company:" + request.lead_company_id
    if request.contact_user_id:
        return "user:" + request.contact_user_id
    return "email:" + (request.contact_email or "").lower()


def shard_of(identity: str, shards: int) -> int:
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big") % shards


def key_by_lead_shard(shards: int) -> beam.PTransform:
    """Pending → (shard of its lead identity among ``shards``, Pending)."""
    return beam.Map(lambda p: (shard_of(lead_identity(p.request), shards), p)).with_output_types(tuple[int, Any])
