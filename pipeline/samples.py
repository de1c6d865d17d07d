"""Deterministic, realistic Segment events for the demo, the tests and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FIRST = ["Ada", "Grace", "Alan", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger",
         "Radia", "John", "Katherine", "Tim", "Hedy", "Guido", "Anita", "Bjarne", "Sophie", "Donald"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen",
        "Dijkstra", "Perlman", "McCarthy", "Johnson", "Berners-Lee", "Lamarr", "van Rossum", "Borg",
        "Stroustrup", "Wilson", "Knuth"]
COMPANY_WORDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell",
                 "Cyberdyne", "Soylent", "Aperture", "Massive", "Dynamic", "Pied", "Oscorp"]
SUFFIXES = ["Inc", "Labs", "GmbH", "Ltd", "Systems", "Analytics", "Robotics", "Foods"]
TITLES = ["CTO", "VP Sales", "Data Engineer", "Founder", "Head of Growth", "Account Executive", None]
PLANS = ["free", "starter", "pro", "enterprise"]


@dataclass(frozen=True)
class Person:
    user_id: str
    name: str
    email: str
    phone: str
    title: str | None
    company_index: int


def company(index: int) -> dict[str, str]:
    word = COMPANY_WORDS[index % len(COMPANY_WORDS)]
    suffix = SUFFIXES[(index // len(COMPANY_WORDS)) % len(SUFFIXES)]
    return {"id": f"comp_{index:05d}", "name": f"{word} {suffix} {index}"}


def people(n_users: int, n_companies: int, rng: random.Random) -> list[Person]:
    out = []
    for i in range(n_users):
        first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST) + i) % len(LAST)]
        comp = i % n_companies
        domain = company(comp)["name"].split()[0].lower() + f"{comp}.example.com"
        out.append(
            Person(
                user_id=f"user_{i:06d}",
                name=f"{first} {last}",
                email=f"{first.lower()}.{last.lower().replace(' ', '')}{i}@{domain}",
                phone=f"+1 415 555 {1000 + (i % 9000):04d}",
                title=rng.choice(TITLES),
                company_index=comp,
            )
        )
    return out


def identify(person: Person, at: datetime, n: int, rng: random.Random, **extra_traits: Any) -> dict[str, Any]:
    traits: dict[str, Any] = {
        "name": person.name,
        "email": person.email,
        "company": company(person.company_index),
        "plan": rng.choice(PLANS),
    }
    if person.title:
        traits["title"] = person.title
    traits.update(extra_traits)
    return {
        "type": "identify",
        "messageId": f"msg_{person.user_id}_{n}",
        "userId": person.user_id,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "traits": traits,
        "context": {"library": {"name": "analytics.js"}},
    }


def events(
    n_users: int = 500,
    n_companies: int = 120,
    events_per_user: int = 6,
    seed: int = 7,
    start: datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Identify calls on every page load (repeats), a second phone for some, tracks and pages in between."""
    rng = random.Random(seed)
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    for person in people(n_users, n_companies, rng):
        at = start + timedelta(seconds=rng.randint(0, 86_400))
        for n in range(events_per_user):
            at += timedelta(seconds=rng.randint(5, 900))
            roll = rng.random()
            if roll < 0.6:
                extra = {"phone": person.phone} if n >= 2 else {}
                if n == events_per_user - 1 and rng.random() < 0.3:
                    extra["phone"] = f"+44 20 7946 {rng.randint(0, 9999):04d}"  # an appended second phone
                yield identify(person, at, n, rng, **extra)
            elif roll < 0.8:
                yield {
                    "type": "page",
                    "messageId": f"msg_{person.user_id}_{n}",
                    "userId": person.user_id,
                    "timestamp": at.isoformat().replace("+00:00", "Z"),
                    "name": "Pricing",
                    "properties": {"path": "/pricing"},
                }
            else:
                yield {
                    "type": "track",
                    "messageId": f"msg_{person.user_id}_{n}",
                    "userId": person.user_id,
                    "event": "Report Exported",
                    "timestamp": at.isoformat().replace("+00:00", "Z"),
                    "properties": {"format": rng.choice(["csv", "pdf"])},
                }


BAD_LINES = [
    "{this is not json",
    '{"type": "identify", "messageId": "bad_no_id", "traits": {"email": "x@example.com"}}',
    '{"type": "identify", "messageId": "bad_traits", "userId": "u_bad1", "traits": "not an object"}',
    '{"type": "identify", "messageId": "bad_company", "userId": "u_bad2", "traits": {"company": {"id": {"not": "an id"}}}}',
    '{"type": "warp", "messageId": "bad_type", "userId": "u_bad3"}',
    '["an", "array"]',
]
