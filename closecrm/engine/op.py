"""What one request did so far (calls, writes, reasons it was held back, field changes), and its Outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from closecrm.api.client import AmbiguousWriteError, CloseAPIError
from closecrm.model import Outcome, UpsertRequest

Record = dict[str, Any]


@dataclass
class Op:
    """One request under way. A write wins over a hold-back: created, then updated, then skipped."""

    req: UpsertRequest
    # Where the request stands in the engine's input. Records it creates rank in this order, not by
    # the server's clock: groups run concurrently, so creates can land out of input order, and
    # "oldest" must pick what applying the requests one at a time would have created first.
    position: int = 0
    calls: int = 0
    created: bool = False
    updated: bool = False
    branch: str | None = None
    blocked: list[str] = field(default_factory=list)
    changes: list[Record] = field(default_factory=list)
    lead_ids: list[str] = field(default_factory=list)
    contact_ids: list[str] = field(default_factory=list)

    def touch(self, lead_id: str | None = None, contact_id: str | None = None) -> None:
        if lead_id and lead_id not in self.lead_ids:
            self.lead_ids.append(lead_id)
        if contact_id and contact_id not in self.contact_ids:
            self.contact_ids.append(contact_id)

    def block(self, reason: str) -> None:
        if reason not in self.blocked:
            self.blocked.append(reason)

    def outcome(self, shared_calls: int = 0) -> Outcome:
        if self.created:
            kind, reason = "created", None
        elif self.updated:
            kind, reason = "updated", None
        elif self.blocked:
            kind, reason = "skipped", self.blocked[0]
        else:
            kind, reason = "unchanged", None
        return Outcome(
            kind=kind,  # type: ignore[arg-type]
            reason=reason,
            branch=self.branch,
            lead_ids=tuple(self.lead_ids),
            contact_ids=tuple(self.contact_ids),
            calls=self.calls + shared_calls,
            changes=tuple(self.changes),
        )

    def failed(self, exc: Exception, shared_calls: int = 0) -> Outcome:
        """How the request ended after ``exc``: Close's refusal, or an error of the engine itself
        (``engine_error:<type>``, e.g. a value a helper could not handle), with what it did so far."""
        if not isinstance(exc, CloseAPIError):
            return Outcome(
                kind="failed",
                reason=f"engine_error:{type(exc).__name__}",
                branch=self.branch,
                lead_ids=tuple(self.lead_ids),
                contact_ids=tuple(self.contact_ids),
                error_body=describe(exc),
                calls=self.calls + shared_calls,
                changes=tuple(self.changes),
            )
        if isinstance(exc, AmbiguousWriteError):
            reason = "ambiguous_write"
        elif exc.status is None:
            reason = "no_response"
        else:
            reason = f"http_{exc.status}"
        return Outcome(
            kind="failed",
            reason=reason,
            branch=self.branch,
            lead_ids=tuple(self.lead_ids),
            contact_ids=tuple(self.contact_ids),
            http_status=exc.status,
            error_body=exc.body,
            calls=self.calls + shared_calls,
            attempts=max(1, getattr(exc, "attempts", 1)),
            changes=tuple(self.changes),
        )


def describe(exc: BaseException, limit: int = 500) -> str:
    """An engine error for a dead letter: its type and message, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
