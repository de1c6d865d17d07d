"""The accounting behind a local streaming Kafka run's commits: a partition's book commits the first
record not settled, never past a gap in what it was told was read; a messageId settles its records once
every request of its events has ended."""

from __future__ import annotations

from transforms.kafka_tally import EventTally, OffsetBook, from_letter_line


def test_the_book_commits_up_to_the_first_record_not_settled():
    book = OffsetBook()
    book.claim(5, 5, 9, (5, 6, 8))  # offset 7: a tombstone or a transaction marker, no record
    assert book.point() == 5 and not book.advanced()
    book.settle(6)
    assert book.point() == 5  # 5 still on its way
    book.settle(5)
    assert book.point() == 8
    book.settle(8)
    assert book.point() == 9
    book.commit(9)
    assert book.ranges == {} and book.settled == set()


def test_the_book_waits_for_a_range_it_has_not_been_told_about():
    book = OffsetBook()
    book.claim(0, 4, 6, (4, 5))  # a later call's claim arrived first
    book.settle(4)
    book.settle(5)
    assert book.point() == 0 and not book.advanced()
    book.claim(0, 0, 4, (0, 1, 2, 3))
    for offset in (0, 1, 3):
        book.settle(offset)
    assert book.point() == 2
    book.commit(2)
    assert book.ranges == {2: (4, frozenset({2, 3})), 4: (6, frozenset({4, 5}))}
    book.settle(2)
    assert book.point() == 6


def test_a_message_id_settles_once_every_request_of_its_events_ended():
    tally = EventTally()
    tally.add(("done", "m"))  # an outcome may arrive before the mapping's count
    assert not tally.complete
    tally.add(("expect", "m", "t", 0, 7, 3))  # three mappings matched
    tally.add(("delta", "m", -1))  # the collapse merged two of them
    assert not tally.complete
    tally.add(("done", "m"))
    assert tally.complete and tally.origins == [("t", 0, 7)]


def test_a_merge_reported_before_any_outcome_does_not_settle_the_event():
    tally = EventTally()
    tally.add(("expect", "m", "t", 0, 7, 2))
    tally.add(("delta", "m", -2 + 1))
    tally.add(("delta", "m", -1))  # an unlikely report that leaves nothing expected
    assert not tally.complete  # no outcome yet


def test_an_appended_letter_settles_what_it_names():
    parse = '{"stage": "parse", "source": {"kafka_topic": "t", "partition": 2, "offset": 9}, "event_ids": ["raw:x"]}'
    upsert = '{"stage": "upsert", "event_ids": ["a", "b"], "source": [{"kafka_topic": "t", "partition": 0, "offset": 1}]}'
    assert list(from_letter_line(parse)) == [("settled", "t", 2, 9)]
    assert list(from_letter_line(upsert)) == [("done", "a"), ("done", "b")]
    assert list(from_letter_line("not json")) == []
