"""Which rate-limit group an endpoint falls in, and each group's window: Close's as the client once
assumed it, or any other grouping a test or benchmark sets (``SimConfig.rate_groups``).

Close publishes no table of its groups, and its windows differ per endpoint; a grouping the client
does not assume is how the simulator checks that the client learns groups from the headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GroupRule:
    """A group: the endpoints it covers, and ``limit`` requests per ``window`` seconds (at time scale 1).

    An endpoint pattern is ``"METHOD /template/"``: METHOD may be ``*``, and a template ending in ``*``
    matches by prefix (``"* /lead/*"`` is every lead route). The first rule that matches wins.
    """

    name: str
    endpoints: tuple[str, ...]
    limit: int
    window: float

    def matches(self, method: str, template: str) -> bool:
        for pattern in self.endpoints:
            want_method, _, want_path = pattern.partition(" ")
            if want_method not in ("*", method):
                continue
            if want_path.endswith("*") and template.startswith(want_path[:-1]):
                return True
            if want_path == template:
                return True
        return False


# Groups the client does not assume: reads and writes of one kind share a budget, lead and contact
# writes share another, and the account's routes (/me/, custom fields, statuses) have a long window
# as Close's /me/ does. Windows differ per group.
FOREIGN: tuple[GroupRule, ...] = (
    GroupRule("search", ("POST /data/search/",), 16, 1.0),
    GroupRule(
        "writes",
        (
            "POST /lead/*",
            "PUT /lead/*",
            "DELETE /lead/*",
            "POST /contact/*",
            "PUT /contact/*",
            "DELETE /contact/*",
        ),
        120,
        2.0,
    ),  # fmt: skip
    GroupRule("records", ("GET /lead/*", "GET /contact/*"), 40, 1.0),
    GroupRule("account", ("GET /me/", "* /custom_field/*", "* /status/*"), 80, 8.0),
)
PRESETS: dict[str, tuple[GroupRule, ...]] = {"foreign": FOREIGN}
OTHER = "other"  # the group of an endpoint no rule matches: ``write_rate`` per second


def parse_rules(value: Any) -> tuple[GroupRule, ...] | None:
    """None (Close's grouping), a preset's name, or a list of ``{name, endpoints, limit, window}``;
    ValueError naming what is wrong."""
    if value is None or value == "close":
        return None
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(
                f"rate_groups must be 'close', {', '.join(map(repr, PRESETS))} or a list of groups"
            )
        return PRESETS[value]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("rate_groups must be a preset name or a non-empty list of groups")
    rules = []
    for item in value:
        if isinstance(item, GroupRule):
            rules.append(item)
            continue
        if not isinstance(item, dict) or set(item) != {"name", "endpoints", "limit", "window"}:
            raise ValueError("each rate group needs exactly: name, endpoints, limit, window")
        name, endpoints, limit, window = item["name"], item["endpoints"], item["limit"], item["window"]
        if not isinstance(name, str) or not name:
            raise ValueError("a rate group's name must be a non-empty string")
        if not isinstance(endpoints, list) or not all(isinstance(e, str) and " /" in e for e in endpoints):
            raise ValueError(f"rate group {name!r}: endpoints must be a list of 'METHOD /path/' patterns")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"rate group {name!r}: limit must be an integer >= 1")
        if isinstance(window, bool) or not isinstance(window, int | float) or window <= 0:
            raise ValueError(f"rate group {name!r}: window must be a number of seconds > 0")
        rules.append(GroupRule(name, tuple(endpoints), limit, float(window)))
    return tuple(rules)


def close_group(method: str, template: str) -> str:
    """The grouping the client long assumed: search, reads, lead writes, contact writes, the rest."""
    if template == "/data/search/":
        return "search"
    if method == "GET":
        return "read"
    if template.startswith("/lead/"):
        return "lead_write"
    if template.startswith("/contact/"):
        return "contact_write"
    return OTHER
