"""PerPerson (bounded input): each person's events deduplicated, mapped and collapsed in one pass.

Bounded input needs no per-key state: one shuffle brings all of a person's events to one call of a fold
(`transforms.sharded.ShardedFold`), which drops the later copies of a messageId, maps each event and
collapses the person's requests. Shuffling events once, rather than by messageId for the dedupe and
again by person for the collapse, saves a pickle round trip of every event and request.

Copies of one messageId normally name one person, so they meet in the same call. When a producer
reuses a messageId for different people, they do not: a small shuffle of (messageId, person) pairs
names, for each messageId seen under several people, the one person whose copy goes on (a side input).
Either way exactly one copy of each messageId goes on, as with the shuffle by messageId.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam

from closecrm.events.mapping import MappingSpec
from closecrm.events.parse import Event
from transforms import metrics
from transforms.collapse import COLLAPSE_SHARDS, _Explode, collapse_persons
from transforms.deadletter import DEAD
from transforms.ledger import LEDGER, SKIPPED
from transforms.mapping import EventMapper, event_person
from transforms.sharded import ShardedFold

PENDING = "pending"
# Shards of messageIds for the check of messageIds several people share: small pairs, a few calls.
DEDUPE_SHARDS = 16


def shard_person(event: Event) -> str:
    """The person an event's requests are keyed by (`transforms.mapping.person_key`), from the event
    alone. An event names a user or an anonymous visitor; one that names neither is placed by its
    messageId (its requests are still keyed by their email once mapped)."""
    return event_person(event) or f"message:{event.message_id}"


def message_and_person(event: Event) -> tuple[str, str]:
    return (event.message_id, shard_person(event))


def _message_id(pair: tuple[str, str]) -> str:
    return pair[0]


def shared_message_ids(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(messageId, person) pairs of some messageIds → (messageId, the first person it came with) for
    each messageId that came with more than one person."""
    first: dict[str, str] = {}
    shared: set[str] = set()
    for message_id, person in pairs:
        if first.setdefault(message_id, person) != person:
            shared.add(message_id)
    for message_id in shared:
        yield (message_id, first[message_id])


class FoldPersons:
    """Every event of some people → per person, their collapsed requests (`collapse_persons`), with the
    dead letters and ledger entries of the events that made none. With ``dedupe``, the first copy of
    each messageId goes on and the later ones end as skipped; ``owners`` names the person whose copy
    goes on for a messageId several people share."""

    def __init__(self, specs: Sequence[MappingSpec], *, dedupe: bool, by_user_id: bool) -> None:
        self._mapper = EventMapper(specs)
        self._dedupe = dedupe
        self._by_user_id = by_user_id
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def __call__(self, events: Iterable[Event], owners: Mapping[str, str] | None = None) -> Iterator[Any]:
        owners = owners or {}
        seen: set[str] = set()
        keyed: list[tuple[str, Any]] = []
        for event in events:
            if self._dedupe:
                message_id = event.message_id
                owner = owners.get(message_id)
                if message_id in seen or (owner is not None and owner != shard_person(event)):
                    self._dupes.inc()
                    # A redelivered copy ends as skipped, under a ledger key of its own.
                    yield beam.pvalue.TaggedOutput(LEDGER, (f"dup:{message_id}:{uuid.uuid4().hex}", SKIPPED))
                    continue
                seen.add(message_id)
            for out in self._mapper.outputs(event):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                else:
                    keyed.append(out)
        yield from collapse_persons(keyed, self._by_user_id)


class PerPerson(beam.PTransform):
    """Bounded input: Event → {PENDING: Pending, DEAD: DeadLetter, LEDGER: (event id, status)}; what
    the redelivery drop, `MapToUpserts` and `CollapsePerPerson` give one after the other."""

    def __init__(
        self,
        specs: Sequence[MappingSpec],
        *,
        dedupe: bool,
        by_user_id: bool,
    ) -> None:
        super().__init__()
        self._specs = list(specs)
        self._dedupe = dedupe
        self._by_user_id = by_user_id

    def expand(self, events):
        side = {}
        if self._dedupe:
            owners = (
                events
                | "MessagePerson" >> beam.Map(message_and_person)
                | "SharedMessageIds" >> ShardedFold(_message_id, shared_message_ids, shards=DEDUPE_SHARDS)
            )
            side = {"owners": beam.pvalue.AsDict(owners)}
        fold = FoldPersons(self._specs, dedupe=self._dedupe, by_user_id=self._by_user_id)
        folded = events | "DedupeMapCollapse" >> ShardedFold(
            shard_person, fold, shards=COLLAPSE_SHARDS, outputs=(DEAD, LEDGER), main="collapsed", side=side
        )
        pending = folded.collapsed | "Explode" >> beam.ParDo(_Explode(packed=True))
        return {PENDING: pending, DEAD: folded[DEAD], LEDGER: folded[LEDGER]}
