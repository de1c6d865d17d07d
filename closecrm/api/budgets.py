"""Which endpoints share a rate budget, learned from Close's `ratelimit` headers: one pacer per pool.

Close limits "per endpoint group" and publishes no table of the groups; their windows differ per
endpoint. So every endpoint (``METHOD /path/{id}/``) starts in a pool of its own, and two pools
merge when the headers show one counter behind them (docs/DESIGN.md, "Rate limits"):

- An answer is compared with the other endpoint's latest answer that arrived before its request
  left (so the server counted it later), when both announce the same ``limit`` (a different one
  proves two counters) and the later one came before the earlier one's window can have ended: its
  ``reset``, counted from when its request was sent, less a second when resets are whole seconds.
- Within one window a shared counter only goes down: a lower ``remaining`` is a vote for sharing,
  an equal or higher one proves two counters, and the endpoints stay apart for good.
- Close's whole-second resets rarely allow a sure comparison, so answers close in time (a quarter
  of a window) are compared too; a higher ``remaining`` there may be a window that just turned, so
  it is tallied against the votes rather than taken as proof.
- ``VOTES`` votes each way, with at most one proof per ``PROOF_SHARE`` votes, merge two endpoints;
  a pool that no longer holds together splits.

A merged pool keeps the pacer of its busiest part; a request already holding a ticket hands its
answer back to the pacer that gave the ticket.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from closecrm.api.pacing import GroupPacer, RateLimit

log = logging.getLogger(__name__)

VOTES = 3  # votes each way before two endpoints are taken to share a counter
PROOF_SHARE = 2  # ... and at most one proof against per this many votes, each way
# With whole-second resets a window's end is known only to the second: a later answer within this
# share of a window of the earlier one is compared anyway, and a higher `remaining` then is a proof
# that may come from a window that just ended (a tally, not a verdict).
LOOSE_GAP = 0.25
HISTORY = 64  # answers kept per endpoint: enough to find one from before a request left


@dataclass(frozen=True)
class _Answer:
    limit: int
    remaining: int
    answered: float
    window_ends: float  # the earliest the server's window behind this answer can end
    whole: bool  # `reset` in whole seconds (Close's): window ends are known only to the second
    window: float  # the longest `reset` this endpoint has shown: about its window


class Budgets:
    """Endpoint -> pool -> pacer, with pools learned from the answers (see the module's doc)."""

    def __init__(self, share: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._share = share
        self._clock = clock
        self._pool_of: dict[str, int] = {}
        self._pacers: dict[int, GroupPacer] = {}
        self._recent: dict[str, deque[_Answer]] = {}  # each endpoint's latest answers, oldest first
        self._votes: dict[tuple[str, str], int] = {}  # (later, earlier) -> answers lower than the earlier one
        self._proofs: dict[tuple[str, str], int] = {}  # the same, not lower, where a window may have ended
        self._apart: set[frozenset[str]] = set()
        self._next_pool = 0

    def pacer(self, endpoint: str) -> GroupPacer:
        pool = self._pool_of.get(endpoint)
        if pool is None:
            pool = self._new_pool(GroupPacer(self._share))
            self._pool_of[endpoint] = pool
        return self._pacers[pool]

    def pools(self) -> list[list[str]]:
        """The endpoints that share a budget, as learned so far (each pool sorted; pools by first member)."""
        out: dict[int, list[str]] = {}
        for endpoint, pool in self._pool_of.items():
            out.setdefault(pool, []).append(endpoint)
        return sorted(sorted(members) for members in out.values())

    def observe(self, endpoint: str, rl: RateLimit | None, sent: float) -> None:
        """An answer (not a 429) to a request sent at ``sent`` (this clock), with its header."""
        self.pacer(endpoint)  # known from now on, even if it never paced a request here
        if rl is None or rl.limit <= 0:
            return
        now = self._clock()
        changed = False
        for other, answers in self._recent.items():
            if other == endpoint or frozenset((endpoint, other)) in self._apart:
                continue
            # The other endpoint's latest answer that arrived before this request left: the server
            # counted this request after that one.
            seen = next((a for a in reversed(answers) if a.answered < sent), None)
            if seen is None:
                continue
            linked = self._linked(endpoint, other)
            if seen.limit != rl.limit:
                self._apart.add(frozenset((endpoint, other)))
            else:
                sure = now < seen.window_ends
                if not sure and not (seen.whole and now - seen.answered <= LOOSE_GAP * seen.window):
                    continue  # maybe in a later window: no evidence
                lower = rl.remaining < seen.remaining
                if sure and not lower:
                    self._apart.add(frozenset((endpoint, other)))
                else:
                    tally = self._votes if lower else self._proofs
                    tally[(endpoint, other)] = tally.get((endpoint, other), 0) + 1
            changed = changed or linked != self._linked(endpoint, other)
        whole = float(rl.reset).is_integer()
        ends = sent + rl.reset - (1.0 if whole else 0.001)
        answers = self._recent.setdefault(endpoint, deque(maxlen=HISTORY))
        window = max(rl.reset, answers[-1].window if answers else 0.0)
        answers.append(_Answer(rl.limit, rl.remaining, now, ends, whole, window))
        if changed:
            self._regroup()

    def _linked(self, a: str, b: str) -> bool:
        """Enough votes both ways (each endpoint's answer lower than the other's before it), few
        proofs against, and never a sure proof: one counter behind both."""
        if frozenset((a, b)) in self._apart:
            return False
        for later, earlier in ((a, b), (b, a)):
            votes = self._votes.get((later, earlier), 0)
            if votes < VOTES or self._proofs.get((later, earlier), 0) * PROOF_SHARE > votes:
                return False
        return True

    def _new_pool(self, pacer: GroupPacer) -> int:
        self._next_pool += 1
        self._pacers[self._next_pool] = pacer
        return self._next_pool

    def _regroup(self) -> None:
        """Pools = endpoints joined by enough votes, never across a pair proven apart."""
        before = self.pools()
        groups: list[set[str]] = []
        for endpoint in sorted(self._pool_of):
            groups.append({endpoint})
        for a, b in sorted({tuple(sorted(pair)) for pair in self._votes}):
            if not self._linked(a, b):
                continue
            ga = next((g for g in groups if a in g), None)
            gb = next((g for g in groups if b in g), None)
            if ga is None or gb is None or ga is gb:
                continue
            if any(frozenset((x, y)) in self._apart for x in ga for y in gb):
                continue
            ga |= gb
            groups.remove(gb)
        old_pools = dict(self._pool_of)
        self._pool_of.clear()
        claimed: set[int] = set()
        for members in groups:
            # Keep the pacer of the busiest old pool among the members (it has seen the shared
            # counter); the part that splits off a pool already kept starts a new one.
            pools = sorted({old_pools[m] for m in members} - claimed, key=lambda p: -self._pacers[p].answers)
            kept = pools[0] if pools else self._new_pool(GroupPacer(self._share))
            claimed.add(kept)
            for m in members:
                self._pool_of[m] = kept
        in_use = set(self._pool_of.values())
        for pool in list(self._pacers):
            if pool not in in_use:
                del self._pacers[pool]
        after = self.pools()
        if after != before:
            log.debug("rate-limit pools learned from the headers: %s", after)
