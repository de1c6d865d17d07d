"""Aliases under faults: 5xx before a write and answers lost after it, on every write including
``POST /lead/merge/`` and ``DELETE /contact/{id}/``. The end state is the one a clean run leaves,
no lead or contact is removed twice (or looked for to remove after it was gone), nothing doubles.

The simulator's dice are seeded, but which call draws which number depends on how concurrent
calls interleave; so every assertion holds whatever calls the faults land on, and a test-side hook
makes sure some land on merges and deletions in every run (each kind of failure on each).
"""

from __future__ import annotations

import contextvars
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from closecrm.engine import UpsertEngine
from closecrm.model import Flags, Outcome, UpsertRequest
from closesim.errors import ApiError
from tests.engine.conftest import CloseEnv

pytestmark = pytest.mark.integration

LAG = 0.3  # search lag in the faulted run; the engine is told it may lag up to twice that
MERGING = Flags(allow_merging=True)
MERGE = "POST /lead/merge/"
DELETE = "DELETE /contact/{id}/"
# The first calls to a merge or a deletion fail like this, in turn: 5xx before anything happens (503
# is retried by the client; 502 is a lost answer to it, so the engine looks first), then answers
# lost after the write was done (502, 504, connection dropped).
FORCED: tuple[tuple[str, int | str], ...] = (
    ("before", 503),
    ("before", 502),
    ("after", 502),
    ("after", 504),
    ("after", "drop"),
)


# ------------------------------------------------------------------ workload


def contact(env: CloseEnv, user: str, *emails: str, n: int, **more: Any) -> dict[str, Any]:
    return {
        env.user_cf: user,
        "emails": [{"email": e, "type": "office"} for e in emails],
        "date_created": f"2020-01-01T00:{n // 60:02d}:{n % 60:02d}+00:00",
        **more,
    }


def seed(env: CloseEnv) -> None:
    """~35 people in leads shaped for every alias branch (oldest first, in list order)."""
    n = itertools.count()
    leads: list[dict[str, Any]] = []

    def lead(company: str | None, name: str | None, *contacts: dict[str, Any]) -> None:
        doc: dict[str, Any] = {
            "contacts": list(contacts),
            "date_created": f"2019-12-01T00:{len(leads) // 60:02d}:{len(leads) % 60:02d}+00:00",
        }
        if name:
            doc["name"] = name
        if company:
            doc[env.company_cf] = company
        leads.append(doc)

    for i in range(6):  # re-key: anon-r<i> becomes ur<i>; anon-r0 and anon-r1 have two contacts each
        lead(None, f"R{i}", contact(env, f"anon-r{i}", f"r{i}@x.example", n=next(n)))
        if i < 2:
            lead(f"cor{i}", f"R{i}b", contact(env, f"anon-r{i}", f"r{i}@work.example", n=next(n)))
    for i in range(5):  # both under one lead (with a company): lists appended, previous contact deleted
        lead(
            f"cos{i}",
            f"S{i}",
            contact(env, f"us{i}", f"us{i}@x.example", n=next(n)),
            contact(
                env,
                f"anon-s{i}",
                f"s{i}@x.example",
                f"US{i}@x.example",
                n=next(n),
                phones=[{"phone": f"+1415555{i:04d}"}],
            ),
        )
    for i in range(5):  # two leads without company ids: lead merged, then the contact
        lead(None, f"LA{i}", contact(env, f"ul{i}", f"ul{i}@x.example", n=next(n)))
        lead(
            None,
            None if i % 2 else f"LB{i}",
            contact(env, f"anon-l{i}", f"l{i}@x.example", n=next(n), urls=[{"url": f"https://l{i}.example"}]),
            contact(env, f"ol{i}", f"ol{i}@x.example", n=next(n)),
        )
    for i in range(3):  # the destination's lead has a company, the other none: merged
        lead(f"coc{i}", f"C{i}", contact(env, f"uc{i}", f"uc{i}@x.example", n=next(n)))
        lead(None, f"CB{i}", contact(env, f"anon-c{i}", f"c{i}@x.example", n=next(n)))
    for i in range(2):  # leads of different companies: never merged
        lead(f"cox{i}a", f"XA{i}", contact(env, f"ux{i}", f"ux{i}@x.example", n=next(n)))
        lead(f"cox{i}b", f"XB{i}", contact(env, f"anon-x{i}", f"x{i}@x.example", n=next(n)))
    for i in range(2):  # two contacts with the new id: the oldest is the destination
        lead(
            None,
            f"D{i}",
            contact(env, f"ud{i}", f"ud{i}-old@x.example", n=next(n)),
            contact(env, f"ud{i}", f"ud{i}-new@x.example", n=next(n)),
        )
        lead(None, f"DB{i}", contact(env, f"anon-d{i}", f"d{i}@x.example", n=next(n)))
    for i in range(2):  # a chain: anon-k<i> -> mid<i> (re-key), then mid<i> -> uk<i> (merge)
        lead(None, f"K{i}", contact(env, f"anon-k{i}", f"k{i}@x.example", n=next(n)))
        lead(f"cok{i}", f"KU{i}", contact(env, f"uk{i}", f"uk{i}@x.example", n=next(n)))
    lead(
        None,
        "N",
        contact(env, "anon-n", "n@x.example", n=next(n)),
        contact(env, "un", "un@x.example", n=next(n)),
    )
    env.seed_leads(*leads)


def workload() -> list[UpsertRequest]:
    """Aliases of every branch and identifies around them, in event time."""
    reqs: list[UpsertRequest] = []

    def alias(previous: str, user: str, flags: Flags = MERGING) -> None:
        add(alias_previous_id=previous, contact_user_id=user, flags=flags)

    def add(**fields: Any) -> None:
        n = len(reqs)
        reqs.append(
            UpsertRequest(
                **fields, timestamp=f"2026-11-01T00:{n // 60:02d}:{n % 60:02d}Z", event_ids=(f"e{n}",)
            )
        )

    for i in range(6):
        add(
            contact_user_id=f"anon-r{i}", contact_name=f"Visitor {i}"
        )  # before the alias: on the previous contact
    for i in range(5):
        add(contact_user_id=f"us{i}", contact_title="CEO")
    for i in range(6):
        alias(f"anon-r{i}", f"ur{i}")
    for i in range(5):
        alias(f"anon-s{i}", f"us{i}")
        alias(f"anon-l{i}", f"ul{i}")
    for i in range(3):
        alias(f"anon-c{i}", f"uc{i}")
    for i in range(2):
        alias(f"anon-x{i}", f"ux{i}")
        alias(f"anon-d{i}", f"ud{i}")
        alias(f"anon-k{i}", f"mid{i}")
    alias("anon-n", "un", Flags())  # merging not allowed: skipped
    alias("nobody", "ur0")  # nothing under the previous id: unchanged
    for i in range(2):
        alias(f"mid{i}", f"uk{i}")
    for i in range(6):
        add(contact_user_id=f"ur{i}", contact_title="Dev", contact_emails=(f"ur{i}@x.example",))
    for i in range(5):
        add(contact_user_id=f"ul{i}", contact_phones=(f"+1415666{i:04d}",))
        alias(f"anon-s{i}", f"us{i}")  # again: the previous contact is gone, unchanged
    for i in range(4):
        add(
            lead_company_id=f"new{i}",
            lead_name=f"New {i}",
            contact_user_id=f"un{i}",
            contact_emails=(f"un{i}@new{i}.example",),
        )
    for i in range(2):  # after the merge, the previous id is a new person
        add(contact_user_id=f"anon-s{i}", contact_emails=(f"s{i}-again@x.example",))
    return reqs


# ------------------------------------------------------------------ watching the simulator


@dataclass
class Removal:
    """One merge or deletion that reached the simulator's store: what it removed and how it ended."""

    endpoint: str
    gone: str  # the lead merged away, or the contact deleted
    status: str  # "done", or the error the store raised


@dataclass
class Watch:
    """What the store was asked to remove; ``plan`` says how the next merges and deletions fail."""

    removals: list[Removal] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # API requests by endpoint
    plan: dict[str, Iterator[tuple[str, int | str]]] = field(default_factory=dict)
    forced: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (endpoint, when, outcome)

    def clear(self) -> None:
        self.removals.clear()
        self.calls.clear()
        self.forced.clear()

    def removed(self, endpoint: str) -> list[str]:
        return [r.gone for r in self.removals if r.endpoint == endpoint and r.status == "done"]

    def removed_again(self) -> list[Removal]:
        """Merges and deletions of a record this run had already removed (or that was never there)."""
        done: set[str] = set()
        out = []
        for r in self.removals:
            if r.gone in done or r.status != "done":
                out.append(r)
            if r.status == "done":
                done.add(r.gone)
        return out


def watch(env: CloseEnv, monkeypatch: pytest.MonkeyPatch) -> Watch:
    """Spy on the store's merges and deletions, and fail them as ``Watch.plan`` says (then as the
    simulator's dice say)."""
    simulator = env.sim.simulator
    store, stats, faults = simulator.store, simulator.stats, simulator.faults
    seen = Watch()
    # The middleware handles each API request in one task, from counting it to its answer.
    endpoint: contextvars.ContextVar[str] = contextvars.ContextVar("endpoint", default="")
    after: contextvars.ContextVar[int | str | None] = contextvars.ContextVar("after", default=None)

    def spy(name: str, label: str, gone: Callable[[Any], str]) -> None:
        original = getattr(store, name)

        def call(arg: Any) -> Any:
            try:
                out = original(arg)
            except ApiError as exc:
                seen.removals.append(Removal(label, gone(arg), type(exc).__name__))
                raise
            seen.removals.append(Removal(label, gone(arg), "done"))
            return out

        monkeypatch.setattr(store, name, call)

    spy("merge_leads", MERGE, lambda body: str(body.get("source")) if isinstance(body, dict) else "")
    spy("delete_contact", DELETE, str)
    request, fault_status, ambiguous_outcome = stats.request, faults.fault_status, faults.ambiguous_outcome

    def on_request(group: str, name: str) -> None:
        endpoint.set(name)
        after.set(None)
        seen.calls[name] += 1
        request(group, name)

    def before_handling() -> int | None:
        name = endpoint.get()
        forced = next(seen.plan[name], None) if name in seen.plan else None
        if forced is None:
            return fault_status()
        when, outcome = forced
        seen.forced[(name, when, str(outcome))] += 1
        if when == "before":
            return int(outcome)
        after.set(outcome)
        return None

    def after_writing() -> int | str | None:
        forced = after.get()
        return forced if forced is not None else ambiguous_outcome()

    monkeypatch.setattr(stats, "request", on_request)
    monkeypatch.setattr(faults, "fault_status", before_handling)
    monkeypatch.setattr(faults, "ambiguous_outcome", after_writing)
    return seen


def users(env: CloseEnv) -> Counter[str]:
    return Counter(str(c.get(env.user_cf)) for c in env.sim.contacts())


def end_state(env: CloseEnv) -> tuple[Any, ...]:
    """The projection, and the counts a duplicate would change."""
    return env.projection(), users(env), len(env.leads()), len(env.sim.contacts())


def apply_in_batches(env: CloseEnv, reqs: list[UpsertRequest], size: int) -> list[Outcome]:
    """As the fault tests apply their workload (on httpx's connection pool; the last test covers
    both transports)."""

    async def go(engine: UpsertEngine) -> list[Outcome]:
        outs: list[Outcome] = []
        for i in range(0, len(reqs), size):
            outs += await engine.upsert_batch(reqs[i : i + size])
        return outs

    return env.run(go, settle_seconds=2 * LAG, client_kw={"backoff_base": 0.01, "http_backend": "httpx"})


# ------------------------------------------------------------------ tests


def test_aliases_under_faults_end_as_without_them_and_remove_nothing_twice(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = workload()
    seen = watch(close, monkeypatch)
    seed(close)
    clean = apply_in_batches(close, reqs, 12)
    labels = Counter(o.label for o in clean)
    assert all(o.kind in ("created", "updated", "unchanged", "skipped") for o in clean), labels
    assert labels["skipped:alias_across_companies"] == 2 and labels["skipped:merging_not_allowed"] == 1
    assert len(seen.removed(MERGE)) == 5 + 3 + 2 + 2  # the LB, CB, DB and K leads
    assert len(seen.removed(DELETE)) == 5 + 5 + 3 + 2 + 2  # every previous contact met by a merge
    expected, merged_clean = end_state(close), Counter(m["merge_status"] for m in close.sim.merges())

    close.fresh_org()
    seen.clear()
    seed(close)
    close.sim.configure(fault_rate=0.05, ambiguous_rate=0.05, search_lag=LAG, random_seed=7)
    seen.plan = {MERGE: iter(FORCED), DELETE: iter(FORCED)}
    outs = apply_in_batches(close, reqs, 12)

    # The faults landed: on merges and deletions every way they can, and by the dice elsewhere too.
    assert sorted(seen.forced) == sorted((name, w, str(o)) for name in (MERGE, DELETE) for w, o in FORCED)
    stats = close.sim.stats()
    assert stats["faults_injected"] > sum(n for (_, w, _), n in seen.forced.items() if w == "before")
    assert stats["ambiguous_injected"] > sum(n for (_, w, _), n in seen.forced.items() if w == "after")
    # Nothing lost: each request ends as it did without faults.
    assert [o.label for o in outs] == [o.label for o in clean]
    # Nothing removed twice: every merge and deletion that reached Close removed a record still there.
    assert seen.removed_again() == []
    assert len(seen.removed(MERGE)) == 12 and len(seen.removed(DELETE)) == 17
    merges = close.sim.merges()
    assert len({m["source"] for m in merges}) == len(merges)
    assert Counter(m["merge_status"] for m in merges) == merged_clean == {"completed": 12}
    # Nothing doubled, nothing missing: the same end state.
    assert end_state(close) == expected


@pytest.mark.parametrize(
    ("backend", "outcome"),
    [
        ("httpx", 502),
        ("httpx", 504),
        ("httpx", "drop"),
        ("aiohttp", 502),
        ("aiohttp", 504),
        ("aiohttp", "drop"),
    ],
)
def test_every_merge_and_deletion_answer_lost_each_reaches_close_once(
    close: CloseEnv, monkeypatch: pytest.MonkeyPatch, backend: str, outcome: int | str
) -> None:
    """Every answer to a merge or a deletion lost after it was done: the engine looks before sending
    again, finds the record gone, and sends neither again. (The previous contact's values are on the
    destination already: no update goes out.)"""
    seen = watch(close, monkeypatch)
    close.seed_leads(
        {"name": "Mine", "contacts": [contact(close, "u2", "a@x.example", n=1)]},
        {
            "contacts": [
                contact(close, "anon-1", "A@x.example", n=2),
                contact(close, "other", "o@x.example", n=3),
            ]
        },
    )
    seen.plan = {MERGE: itertools.repeat(("after", outcome)), DELETE: itertools.repeat(("after", outcome))}

    async def go(engine: UpsertEngine) -> Outcome:
        await engine.client.get("me/")  # a kept-alive connection, as in a running job
        return await engine.upsert_one(
            UpsertRequest(alias_previous_id="anon-1", contact_user_id="u2", flags=MERGING)
        )

    out = close.run(go, client_kw={"backoff_base": 0.01, "http_backend": backend})
    assert seen.calls[MERGE] == seen.calls[DELETE] == 1
    assert [(r.endpoint, r.status) for r in seen.removals] == [(MERGE, "done"), (DELETE, "done")]
    assert out.label == "updated", out
    [lead] = close.leads()
    assert lead["name"] == "Mine"
    assert sorted(c[close.user_cf] for c in lead["contacts"]) == ["other", "u2"]
