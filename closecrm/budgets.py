"""Which endpoints share a rate budget, learned from Close's `ratelimit` headers: one pacer per pool.

Close limits "per endpoint group" and publishes no table of the groups; their windows differ per
endpoint. So every endpoint (``METHOD /path/{id}/``) starts in a pool of its own, and two pools
merge when the headers show one counter behind them:

- Two answers can be compared when they announce the same ``limit``, the later request was sent after
  the earlier answer arrived (so the server counted it later), and it was answered before the earlier
  answer's window can have ended (its ``reset``, counted from when it was sent; minus a second when
  resets are whole seconds, as Close rounds them).
- A shared counter only goes down within a window: the later answer's ``remaining`` is lower. That is
  a vote for sharing. A ``remaining`` as high or higher proves two counters: the endpoints stay apart
  for good (and a pool holding both splits). So does a different ``limit``.
- ``VOTES`` votes and no proof against merge the two endpoints' pools.

A pool's pacer keeps its state when another pool joins it; a request already holding a ticket hands
its answer back to the pacer that gave the ticket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from closecrm.ratelimit import GroupPacer, RateLimit

log = logging.getLogger(__name__)

VOTES = 4


@dataclass(frozen=True)
class _Answer:
    limit: int
    remaining: int
    answered: float
    window_ends: float  # the earliest the server's window behind this answer can end


class Budgets:
    """Endpoint -> pool -> pacer, with pools learned from the answers (see the module's doc)."""

    def __init__(self, share: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._share = share
        self._clock = clock
        self._pool_of: dict[str, int] = {}
        self._pacers: dict[int, GroupPacer] = {}
        self._last: dict[str, _Answer] = {}
        self._votes: dict[frozenset[str], int] = {}
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
        for other, seen in self._last.items():
            if other == endpoint:
                continue
            pair = frozenset((endpoint, other))
            if pair in self._apart:
                continue
            if seen.limit != rl.limit:
                self._apart.add(pair)
                changed = changed or self._pool_of.get(other) == self._pool_of.get(endpoint)
                continue
            if sent <= seen.answered or now >= seen.window_ends:
                continue  # counted maybe before it, or maybe in a later window: no evidence
            if rl.remaining < seen.remaining:
                self._votes[pair] = self._votes.get(pair, 0) + 1
                changed = changed or self._votes[pair] == VOTES
            else:
                self._apart.add(pair)
                changed = changed or self._pool_of.get(other) == self._pool_of.get(endpoint)
        whole = float(rl.reset).is_integer()
        self._last[endpoint] = _Answer(
            rl.limit, rl.remaining, now, sent + rl.reset - (1.0 if whole else 0.001)
        )
        if changed:
            self._regroup()

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
        for pair, votes in sorted(self._votes.items(), key=lambda kv: sorted(kv[0])):
            if votes < VOTES or pair in self._apart:
                continue
            a, b = sorted(pair)
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
