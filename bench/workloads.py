"""Deterministic, seeded benchmark workloads (Segment-spec events, one JSON object a line).

    .venv/bin/python bench/workloads.py W1 --out /tmp/w1.jsonl --scale 0.1

- W1 "chatty identify": 200,000 identify events of 10,000 users over 1,500 companies; every user identifies
  ~20 times, mostly with identical traits; 5 % of events change a scalar (title or name), 5 % add a second
  phone or email (the new value is then carried by that user's later events too).
- W2 "first sync": 50,000 distinct new users over 8,000 companies, one identify each.
- W4 "bad input": W1 plus corrupted events (2 % of W1's count by default, `--bad-rate`) spread evenly over
  the kinds in `BAD_KINDS`: unparseable JSON, missing ids, wrong types, over-large, invalid emails. The good
  events are exactly W1's, so W1's reference state is W4's too.

Every size is multiplied by ``--scale`` (at least 1 user and 1 company). The same arguments always give
the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.samples import TITLES, company, people  # noqa: E402

START = datetime(2026, 11, 1, tzinfo=UTC)
BAD_KINDS = ("unparseable_json", "missing_ids", "wrong_types", "over_large", "invalid_email")
OVER_LARGE_BYTES = 70_000  # above the default max_event_bytes (65,536)


@dataclass(frozen=True)
class Sizes:
    events: int
    users: int
    companies: int


W1_SIZES = Sizes(events=200_000, users=10_000, companies=1_500)
W2_SIZES = Sizes(events=50_000, users=50_000, companies=8_000)


def scaled(sizes: Sizes, scale: float) -> Sizes:
    return Sizes(
        events=max(1, round(sizes.events * scale)),
        users=max(1, round(sizes.users * scale)),
        companies=max(1, round(sizes.companies * scale)),
    )


def _ts(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _event(user_id: str, n: int, at: datetime, traits: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"msg_{user_id}_{n}",
        "userId": user_id,
        "timestamp": _ts(at),
        "traits": dict(traits),
        "context": {"library": {"name": "analytics.js", "version": "4.1.0"}},
    }


def w1(scale: float = 1.0, seed: int = 1) -> Iterator[dict[str, Any]]:
    """Chatty identify: users identify in turn (a shuffled round robin), ~events/users times each."""
    size = scaled(W1_SIZES, scale)
    rng = random.Random(seed)
    folks = people(size.users, size.companies, rng)
    traits: list[dict[str, Any]] = []
    for p in folks:
        t: dict[str, Any] = {"name": p.name, "email": p.email, "company": company(p.company_index)}
        t["plan"] = rng.choice(["free", "starter", "pro", "enterprise"])
        if p.title:
            t["title"] = p.title
        if rng.random() < 0.5:
            t["phone"] = p.phone
        traits.append(t)
    seen = [0] * size.users
    order: list[int] = []
    at = START
    for _ in range(size.events):
        if not order:
            order = list(range(size.users))
            rng.shuffle(order)
        u = order.pop()
        p = folks[u]
        roll = rng.random()
        t = traits[u]
        if seen[u] and roll < 0.05:  # a scalar changes
            if rng.random() < 0.5:
                t["title"] = rng.choice([x for x in TITLES if x]) + f" {rng.randint(2, 9)}"
            else:
                t["name"] = p.name + rng.choice([" Jr", " Sr", " II", " III"])
        elif seen[u] and roll < 0.10:  # a second phone or email: Close keeps both
            if rng.random() < 0.5:
                t["phone"] = f"+44 20 7946 {rng.randint(0, 9999):04d}"
            else:
                local, domain = p.email.split("@")
                t["email"] = f"{local}.{rng.randint(2, 99)}@{domain}"
        at += timedelta(milliseconds=rng.randint(1, 400))
        yield _event(p.user_id, seen[u], at, t)
        seen[u] += 1


def w2(scale: float = 1.0, seed: int = 2) -> Iterator[dict[str, Any]]:
    """First sync: every user once, in a shuffled order."""
    size = scaled(W2_SIZES, scale)
    rng = random.Random(seed)
    folks = people(size.users, size.companies, rng)
    rng.shuffle(folks)
    at = START
    for p in folks:
        t: dict[str, Any] = {"name": p.name, "email": p.email, "company": company(p.company_index)}
        if p.title:
            t["title"] = p.title
        if rng.random() < 0.5:
            t["phone"] = p.phone
        at += timedelta(milliseconds=rng.randint(1, 400))
        yield _event(p.user_id, 0, at, t)


def bad_line(kind: str, i: int, good: dict[str, Any]) -> str:
    """One corrupted event modelled on a good one (same user, its own messageId)."""
    ev = json.loads(json.dumps(good))
    ev["messageId"] = f"bad_{kind}_{i}"
    if kind == "unparseable_json":
        return json.dumps(ev)[: -7 - i % 5]  # truncated mid-object
    if kind == "missing_ids":
        ev.pop("userId", None)
        ev.pop("anonymousId", None)
    elif kind == "wrong_types":
        if i % 2:
            ev["traits"] = "not an object"
        else:
            ev["traits"]["name"] = {"first": "a", "last": "dict"}
    elif kind == "over_large":
        ev["traits"]["bio"] = "x" * OVER_LARGE_BYTES
    elif kind == "invalid_email":
        ev["traits"]["email"] = ["not-an-email", "a@", "@b.example.com", "two@@c.example.com"][i % 4]
    else:
        raise ValueError(kind)
    return json.dumps(ev)


def w4(scale: float = 1.0, seed: int = 4, bad_rate: float = 0.02) -> Iterator[str]:
    """W1's lines with corrupted lines inserted (kinds in turn), as raw JSON lines."""
    good = [json.dumps(e) for e in w1(scale)]
    rng = random.Random(seed)
    n_bad = round(len(good) * bad_rate)
    at = sorted(rng.randrange(len(good)) for _ in range(n_bad))
    j = 0
    for idx, line in enumerate(good):
        while j < n_bad and at[j] == idx:
            kind = BAD_KINDS[j % len(BAD_KINDS)]
            yield bad_line(kind, j, json.loads(line))
            j += 1
        yield line


def lines(name: str, scale: float = 1.0, bad_rate: float = 0.02) -> Iterator[str]:
    if name == "W1":
        return (json.dumps(e) for e in w1(scale))
    if name == "W2":
        return (json.dumps(e) for e in w2(scale))
    if name == "W4":
        return w4(scale, bad_rate=bad_rate)
    raise SystemExit(f"unknown workload {name!r} (W1, W2, W4)")


def write(name: str, out: str | Path, scale: float = 1.0, bad_rate: float = 0.02) -> int:
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for line in lines(name, scale, bad_rate):
            fh.write(line + "\n")
            n += 1
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=["W1", "W2", "W4"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--bad-rate", type=float, default=0.02, help="W4: corrupted lines / W1 lines")
    args = ap.parse_args(argv)
    n = write(args.workload, args.out, args.scale, args.bad_rate)
    print(json.dumps({"workload": args.workload, "scale": args.scale, "lines": n, "out": args.out}))


if __name__ == "__main__":
    main()
