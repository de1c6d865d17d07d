"""SimConfig: every knob of the simulator, mutable at runtime (tests, admin endpoint, CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from closesim.groups import parse_rules

_PROBABILITIES = ("fault_rate", "ambiguous_rate", "storm_rate")
_POSITIVE = ("search_rate", "write_rate", "time_scale", "org_limit_factor", "cursor_ttl_seconds")
_NON_NEGATIVE = ("latency_ms", "jitter_ms", "search_lag", "storm_seconds", "merge_delay_seconds")
_COUNTS = ("search_fields_max", "cursor_max_results")
TERM_CASES = ("sensitive", "insensitive")


@dataclass
class SimConfig:
    """Knobs. Rates are requests per second per API key; the organisation gets ``org_limit_factor`` times that.

    ``time_scale`` multiplies every rate (windows shrink) so rate-limited benchmarks run fast.
    The realism knobs (latency, lag, faults, ambiguous failures, storms, slow merges) are all off by default.
    """

    api_keys: list[str] = field(default_factory=lambda: ["test_key"])
    search_rate: float = 16.0
    write_rate: float = 40.0  # every group but search: lead_write, contact_write, read, other
    time_scale: float = 1.0
    limits_enabled: bool = True
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    search_lag: float = 0.0
    fault_rate: float = 0.0
    ambiguous_rate: float = 0.0
    ratelimit_separator: str = ","
    random_seed: int | None = None
    org_limit_factor: float = 3.0
    storm_rate: float = 0.0  # chance that a request starts a 429 storm of storm_seconds
    storm_seconds: float = 1.0
    # POST /lead/merge/ answers "in_progress" and the merge takes effect this many seconds later
    # (0: it is applied before the response, which says "completed").
    merge_delay_seconds: float = 0.0
    # What Close does not document: whether a `term` condition compares text as stored
    # ("sensitive") or case-folded ("insensitive"). Lookups must hold either way.
    term_case: str = "sensitive"
    # Limits public reports describe for POST /data/search/: a `_fields` list per object type
    # longer than this is refused ("List is too long"); a cursor older than cursor_ttl_seconds is
    # refused; one cursor walk serves at most cursor_max_results records, then ends.
    search_fields_max: int = 50
    cursor_ttl_seconds: float = 30.0
    cursor_max_results: int = 10_000
    # The rate-limit groups and their windows: None or "close" (search, read, lead_write,
    # contact_write, other), "foreign", or a list of groups (closesim/groups.py).
    rate_groups: Any = None
    # Search condition shapes answered with 400, e.g. "contact.custom_field:term",
    # "contact_email.email:term", "lead.date_created:moment_range" (see Query in search.py).
    reject_shapes: list[str] = field(default_factory=list)

    def update(self, **knobs: Any) -> None:
        """Validate then apply knobs; unknown names or bad values raise ValueError and change nothing."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise ValueError(f"unknown simulator knob(s): {', '.join(unknown)}")
        clean = {name: _coerce(name, value) for name, value in knobs.items()}
        for name, value in clean.items():
            setattr(self, name, value)

    def to_json(self, mask_keys: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if mask_keys:
            out["api_keys"] = [mask_key(k) for k in self.api_keys]
        return out


def mask_key(key: str) -> str:
    """Enough of a key to tell keys apart in a status page, never enough to use it."""
    return f"{key[:2]}…({len(key)} chars)" if key else ""


def _coerce(name: str, value: Any) -> Any:
    if name == "api_keys":
        if not isinstance(value, list) or not value or not all(isinstance(k, str) and k for k in value):
            raise ValueError("api_keys must be a non-empty list of non-empty strings")
        return list(value)
    if name == "limits_enabled":
        if not isinstance(value, bool):
            raise ValueError("limits_enabled must be a boolean")
        return value
    if name == "ratelimit_separator":
        if value not in (",", ";"):
            raise ValueError("ratelimit_separator must be ',' or ';'")
        return value
    if name == "term_case":
        if value not in TERM_CASES:
            raise ValueError("term_case must be 'sensitive' or 'insensitive'")
        return value
    if name in _COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer")
        return value
    if name == "rate_groups":
        parse_rules(value)  # raises ValueError naming the problem
        return value
    if name == "reject_shapes":
        if not isinstance(value, list) or not all(isinstance(v, str) and ":" in v for v in value):
            raise ValueError("reject_shapes must be a list of 'field:condition' shapes")
        return list(value)
    if name == "random_seed":
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError("random_seed must be an integer or null")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    number = float(value)
    if name in _POSITIVE and number <= 0:
        raise ValueError(f"{name} must be > 0")
    if name in _NON_NEGATIVE and number < 0:
        raise ValueError(f"{name} must be >= 0")
    if name in _PROBABILITIES and not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1")
    return number
