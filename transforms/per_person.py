"""PerPerson (bounded input): each person's events parsed, deduplicated, mapped and collapsed in one pass.

Bounded input needs no per-key state: one shuffle brings all of a person's payloads to one call of a
fold (`transforms.sharded.ShardedFold`), which parses them, drops the later copies of a messageId, maps
each event and collapses the person's requests. Shuffling once, rather than by messageId for the dedupe
and again by person for the collapse, saves a pickle round trip of every event and request; shuffling
the payloads as read, rather than parsed events, ships text that packs small and cheaply, and the
person and messageId that place a payload are read from it without a whole parse (`identity`).

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
from closecrm.events.parse import identity
from closecrm.model import flat_read, read_of
from transforms import metrics
from transforms.collapse import COLLAPSE_SHARDS, _Explode, collapse_persons
from transforms.deadletter import DEAD
from transforms.kafka_tally import KafkaClaim
from transforms.ledger import LEDGER, SKIPPED
from transforms.mapping import EventMapper, event_person, person_of
from transforms.parse import EventParser, received
from transforms.sharded import ShardedFold

PENDING = "pending"
# Shards of messageIds for the check of messageIds several people share: small pairs, a few calls.
DEDUPE_SHARDS = 16


class Identify(beam.DoFn):
    """A payload as read → (person, messageId, (payload, origin)): who the event it makes is about
    (`transforms.mapping.event_person` of that event: a parsed event names a user or a visitor) and
    its messageId. A payload that makes no event is dead-lettered
    here, by its parse. Counts every event read."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parser = EventParser(max_bytes)
        self._read = metrics.counter(metrics.EVENTS_READ)

    def start_bundle(self) -> None:
        self._count = 0

    def process(self, raw: Any) -> Iterator[Any]:
        # A bounded read commits its offsets itself: its claims serve the streaming commit stage only.
        if not isinstance(raw, KafkaClaim):
            self._count += 1  # counted per bundle: a Beam counter update costs more than this DoFn's work
            payload, origin = received(raw)
            ids = identity(payload, self._max_bytes)
            if ids is None:  # its parse fails: the dead letter says why
                yield from self._parser.outputs(payload, origin)
            else:
                user_id, anonymous_id, message_id = ids
                yield (person_of(user_id, anonymous_id), message_id, (payload, origin))

    def finish_bundle(self) -> None:
        self._read.inc(self._count)


def _person(item: tuple[str, str, Any]) -> str:
    return item[0]


def _read(item: tuple[str, str, Any]) -> tuple[Any, ...]:
    return flat_read(*item[2])


def message_and_person(item: tuple[str, str, Any]) -> tuple[str, str]:
    return (item[1], item[0])


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
    """Every payload of some people (each a `closecrm.model.flat_read` of the payload and its origin) →
    per person, their collapsed requests (`collapse_persons`), with the dead letters and ledger entries
    of the payloads that made none. With ``dedupe``, the first copy of each messageId goes on and the
    later ones end as skipped; ``owners`` names the person whose copy goes on for a messageId several
    people share."""

    def __init__(self, specs: Sequence[MappingSpec], *, max_bytes: int, dedupe: bool, by_user_id: bool) -> None:
        self._parser = EventParser(max_bytes)
        self._mapper = EventMapper(specs)
        self._dedupe = dedupe
        self._by_user_id = by_user_id
        self._dupes = metrics.counter(metrics.EVENTS_DUPLICATE)

    def __call__(self, payloads: Iterable[tuple[Any, ...]], owners: Mapping[str, str] | None = None) -> Iterator[Any]:
        with metrics.deferred():  # a few counts per event, handed to Beam once per call
            yield from self._fold(payloads, owners or {})

    def _fold(self, payloads: Iterable[tuple[Any, ...]], owners: Mapping[str, str]) -> Iterator[Any]:
        seen: set[str] = set()
        keyed: list[tuple[str, Any]] = []
        for event in self._events(payloads):
            if isinstance(event, beam.pvalue.TaggedOutput):
                yield event
                continue
            if self._dedupe:
                message_id = event.message_id
                owner = owners.get(message_id)
                if message_id in seen or (owner is not None and owner != event_person(event)):
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

    def _events(self, payloads: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        for flat in payloads:
            yield from self._parser.outputs(*read_of(flat))


class PerPerson(beam.PTransform):
    """Bounded input: payload as read (or `Received`) → {PENDING: Pending, DEAD: [DeadLetter, ...],
    LEDGER: [(event id, status), ...]} (a PCollection per stage in each list); what `ParseEvents`, the
    redelivery drop, `MapToUpserts` and `CollapsePerPerson` give one after the other."""

    def __init__(
        self,
        specs: Sequence[MappingSpec],
        *,
        max_bytes: int,
        dedupe: bool,
        by_user_id: bool,
        processes: int,
    ) -> None:
        super().__init__()
        self._processes = processes  # worker processes beside this one for the fold (`ShardedFold`)
        self._specs = list(specs)
        self._max_bytes = max_bytes
        self._dedupe = dedupe
        self._by_user_id = by_user_id

    def expand(self, raw):
        identified = raw | "Identify" >> beam.ParDo(Identify(self._max_bytes)).with_outputs(
            DEAD, LEDGER, main="identified"
        )
        side = {}
        if self._dedupe:
            owners = (
                identified.identified
                | "MessagePerson" >> beam.Map(message_and_person)
                | "SharedMessageIds" >> ShardedFold(_message_id, shared_message_ids, shards=DEDUPE_SHARDS)
            )
            side = {"owners": beam.pvalue.AsDict(owners)}
        fold = FoldPersons(self._specs, max_bytes=self._max_bytes, dedupe=self._dedupe, by_user_id=self._by_user_id)
        folded = identified.identified | "ParseDedupeMapCollapse" >> ShardedFold(
            _person,
            fold,
            shards=COLLAPSE_SHARDS,
            outputs=(DEAD, LEDGER),
            main="collapsed",
            side=side,
            value=_read,
            processes=self._processes,
        )
        pending = folded.collapsed | "Explode" >> beam.ParDo(_Explode(packed=True))
        # Dead letters and ledger entries stay one PCollection per stage, each taken on where it is
        # made (`WriteDeadLetters`, `SettleLedger`), not flattened here.
        return {
            PENDING: pending,
            DEAD: [identified[DEAD], folded[DEAD]],
            LEDGER: [identified[LEDGER], folded[LEDGER]],
        }
