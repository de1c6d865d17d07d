"""transforms.sharded: stable_shard, and ShardedFold giving each fold call every item of its keys."""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.pvalue import TaggedOutput
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue

from transforms import metrics, sharded
from transforms.sharded import AWAY_MIN_BYTES, PackShards, ShardedFold, _FoldShard, pack, stable_shard, unpack


def test_stable_shard_is_crc32_of_the_utf8_key_and_takes_any_str() -> None:
    assert stable_shard("abc", 16) == zlib.crc32(b"abc") % 16
    assert stable_shard("user:\ud800", 32) == zlib.crc32("user:\ud800".encode("utf-8", "surrogatepass")) % 32
    assert {stable_shard(f"m{i}", 16) for i in range(2_000)} == set(range(16))
    assert stable_shard("anything", 1) == 0


def _key(item: tuple[str, int]) -> str:
    return item[0]


def sums_per_key(items: Iterable[tuple[str, int]]) -> Iterator[Any]:
    """One output per key of the call: (key, sum); a tagged "calls" output per call, with its keys."""
    sums: dict[str, int] = defaultdict(int)
    for key, n in items:
        sums[key] += n
    yield from sorted(sums.items())
    yield TaggedOutput("calls", sorted(sums))


ITEMS = [(f"k{i % 50}", i) for i in range(1_000)]


def expected_sums() -> list[tuple[str, int]]:
    sums: dict[str, int] = defaultdict(int)
    for key, n in ITEMS:
        sums[key] += n
    return sorted(sums.items())


def at_most(n: int) -> Any:
    def check(counts: list[int]) -> None:
        assert counts[0] <= n, counts

    return check


@pytest.mark.parametrize(
    "pack_limit", [1, 7, 20_000], ids=["ship each item", "ship mid-bundle", "ship at end"]
)
def test_every_item_of_a_key_meets_in_one_fold_call(pack_limit: int) -> None:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(ITEMS)
            | ShardedFold(
                _key, sums_per_key, shards=8, pack_limit=pack_limit, outputs=("calls",), main="sums"
            )
        )
        assert_that(out.sums, equal_to(expected_sums()), label="one sum per key")
        # each key in exactly one call, and no more calls than shards
        keys = out.calls | beam.FlatMap(lambda keys: keys)
        assert_that(keys, equal_to(sorted({k for k, _ in ITEMS})), label="each key once")
        calls = out.calls | beam.combiners.Count.Globally()
        assert_that(calls, at_most(8), label="calls")


def test_without_tagged_outputs_the_result_is_the_folds_main_output() -> None:
    def main_only(items: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
        return (x for x in sums_per_key(items) if not isinstance(x, TaggedOutput))

    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(ITEMS) | ShardedFold(_key, main_only, shards=3)
        assert_that(out, equal_to(expected_sums()))


def test_a_bundle_ships_one_pack_per_shard_in_the_global_window_at_its_end() -> None:
    fn = PackShards(_key, 4, pack_limit=1_000)
    fn.start_bundle()
    assert [x for item in ITEMS[:100] for x in fn.process(item)] == []  # held until the end of the bundle
    shipped = list(fn.finish_bundle())
    assert all(isinstance(wv, WindowedValue) for wv in shipped)
    packs = [wv.value for wv in shipped]
    assert [shard for shard, _ in packs] == sorted({stable_shard(k, 4) for k, _ in ITEMS[:100]})
    for shard, blob in packs:
        assert unpack(blob) == [item for item in ITEMS[:100] if stable_shard(item[0], 4) == shard]


def test_a_full_bundle_ships_its_packs_before_its_end() -> None:
    fn = PackShards(_key, 4, pack_limit=10)
    fn.start_bundle()
    early = [x for item in ITEMS[:25] for x in fn.process(item)]
    late = [wv.value for wv in fn.finish_bundle()]
    items = [item for _, blob in [*early, *late] for item in unpack(blob)]
    assert sorted(items) == sorted(ITEMS[:25])
    assert sum(len(unpack(blob)) for _, blob in early) == 20


def test_the_fold_gets_the_items_of_all_packs_in_pack_order() -> None:
    seen: list[Any] = []

    def record(items: Iterable[Any]) -> list[Any]:
        seen.extend(items)
        return []

    assert list(_FoldShard(record).process((0, [pack([1, 2]), pack([]), pack([3])]))) == []
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("shards, pack_limit", [(0, 10), (4, 0)])
def test_shards_and_pack_limit_must_be_positive(shards: int, pack_limit: int) -> None:
    with pytest.raises(ValueError):
        ShardedFold(_key, sums_per_key, shards=shards, pack_limit=pack_limit)


# --------------------------------------------------------------------------- folding in worker processes


def counted_sums(items: Iterable[tuple[str, int]]) -> Iterator[Any]:
    """`sums_per_key`, counting each item (a Beam counter), and saying which process folded (tagged "pids")."""
    yield from sums_per_key(_counted(items, metrics.counter("test_fold_items")))
    yield TaggedOutput("pids", os.getpid())


def _counted(items: Iterable[tuple[str, int]], counter: Any) -> Iterator[tuple[str, int]]:
    for item in items:
        counter.inc()
        yield item


def _fold_away(processes: int, away_min_bytes: int) -> tuple[list[Any], list[int], int]:
    """(sums, pids of the folding processes, the items counted) of ITEMS on the in-process runner."""
    p = beam.Pipeline(runner=FnApiRunner())
    out = (
        p
        | beam.Create(ITEMS)
        | ShardedFold(
            _key,
            counted_sums,
            shards=8,
            outputs=("pids", "calls"),
            main="sums",
            processes=processes,
            away_min_bytes=away_min_bytes,
        )
    )
    _SEEN.clear()
    for name in ("sums", "pids"):
        _ = out[name] | f"Collect{name}" >> beam.Map(_collect_into, name)
    result = p.run()
    result.wait_until_finish()
    counted = result.metrics().query(beam.metrics.MetricsFilter().with_name("test_fold_items"))["counters"]
    return sorted(_SEEN.get("sums", [])), _SEEN.get("pids", []), sum(c.committed for c in counted)


# What a run gave, by output: the in-process runner runs the collecting Maps in this process.
_SEEN: dict[str, list[Any]] = {}


def _collect_into(item: Any, name: str) -> None:
    _SEEN.setdefault(name, []).append(item)


@pytest.mark.parametrize("processes", [1, 2])
def test_shards_folded_in_worker_processes_give_what_folding_here_gives(processes: int) -> None:
    sums, pids, counted = _fold_away(processes, away_min_bytes=0)
    assert sums == expected_sums()
    assert counted == len(ITEMS)  # the workers' counts reach Beam's
    assert len(pids) == len({stable_shard(k, 8) for k, _ in ITEMS})  # one fold per shard, wherever it ran
    assert {pid for pid in pids if pid != os.getpid()}, "no shard was folded in a worker process"


def test_small_shards_are_folded_here_and_start_no_process() -> None:
    sums, pids, counted = _fold_away(1, away_min_bytes=AWAY_MIN_BYTES)
    assert sums == expected_sums() and counted == len(ITEMS)
    assert set(pids) == {os.getpid()}


def failing_fold(items: Iterable[Any]) -> Iterator[Any]:
    for _ in items:
        raise ValueError("this fold fails in its worker")
    yield from ()


def test_a_fold_that_fails_in_a_worker_fails_the_run() -> None:
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create(ITEMS) | ShardedFold(_key, failing_fold, shards=2, processes=1, away_min_bytes=0)
    with pytest.raises(Exception, match="this fold fails in its worker"):
        p.run().wait_until_finish()


def test_processes_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        ShardedFold(_key, sums_per_key, shards=2, processes=-1)


def test_a_large_input_starts_the_fold_workers_while_it_is_still_being_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sharded, "WARM_ITEMS", 3)
    workers = sharded.FoldWorkers.of(1, counted_sums)
    assert workers.module == __name__
    fn = PackShards(_key, 4, pack_limit=1_000, warm=workers)
    fn.start_bundle()
    for item in ITEMS[:2]:
        list(fn.process(item))
    assert (1, __name__) not in sharded._POOLS
    list(fn.process(ITEMS[2]))
    try:
        pool = sharded._POOLS[(1, __name__)]
        assert pool.submit(os.getpid).result(timeout=60) != os.getpid()  # a process of its own
        assert workers.pool() is pool  # the folding stage takes the same workers
    finally:
        workers.end()
    assert (1, __name__) not in sharded._POOLS
