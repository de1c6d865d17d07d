"""Every counter the job increments reaches the summary: the job's namespaces are all collected, every
collected value is a row, and the Close client's totals are read safely from another thread."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import apache_beam as beam
import httpx
import pytest
from apache_beam.metrics import Metrics
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from rich.console import Console

from closecrm.api.client import CloseClient
from closecrm.api.counters import Totals
from closecrm.wiring import KeySource
from pipeline import summary
from pipeline.runjob import RunRequest, run
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import sim_config, write_jsonl
from transforms import metrics as m
from transforms.client_metrics import client_counters

# --------------------------------------------------------------------------- collect and render


class _CountEverywhere(beam.DoFn):
    def process(self, item: int):
        m.counter(m.EVENTS_READ).inc()
        Metrics.counter(m.NAMESPACE + ".sources", m.FILES_UNREADABLE).inc(2)
        Metrics.counter("close_syncx", "not_ours").inc()  # a namespace that only starts the same
        Metrics.counter("some_library", "not_ours").inc()
        m.distribution(m.BATCH_SIZE).update(item)
        yield item


def test_collect_reads_the_job_namespace_and_those_under_it_and_nothing_else() -> None:
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([2, 4]) | beam.ParDo(_CountEverywhere())
    result = p.run()
    result.wait_until_finish()
    assert summary.collect(result) == {
        m.EVENTS_READ: 2,
        m.FILES_UNREADABLE: 4,
        m.BATCH_SIZE + "_count": 2,
        m.BATCH_SIZE + "_mean": 3,
    }


def rendered(values: dict[str, int]) -> str:
    out = io.StringIO()
    summary.render(values, Console(file=out, width=200))
    return out.getvalue()


def test_every_collected_value_is_a_row_of_the_summary() -> None:
    values = {
        m.EVENTS_READ: 10,
        m.EVENTS_BY_TYPE + "identify": 10,
        m.CALLS_PREFIX + "search": 3,
        m.API_RETRIES: 1,
        m.FILES_SKIPPED: 1,
        m.LATENCY_MS + "_mean": 42,
        "a_counter_added_later": 7,
    }
    rows = summary._rows(values)
    assert {(stage, label) for stage, label, _ in rows} >= {
        ("input", "files of no known format, not read"),
        ("events", "of type identify"),
        ("Close API", "calls search"),
        ("Close API", "retries (429s, 5xx, timeouts)"),
        ("Close API", "latency, mean ms"),
        ("other", "a_counter_added_later"),
    }
    assert sum(value for stage, _, value in rows if stage == "other") == 7
    text = rendered(values)
    assert "a_counter_added_later" in text and "files of no known format" in text


def test_input_problems_show_only_when_there_were_some() -> None:
    labels = [label for stage, label, _ in summary._rows({m.EVENTS_READ: 5}) if stage == "input"]
    assert labels == []
    assert ("input", "Kafka tombstones, not read", 3) in summary._rows({m.KAFKA_TOMBSTONES: 3})


# --------------------------------------------------------------------------- the client's totals, across threads


def test_totals_read_while_another_thread_adds_new_names() -> None:
    totals = Totals()
    done = threading.Event()

    def add() -> None:
        for i in range(20_000):
            totals.add(f"name{i % 500}:{i}")  # a new name nearly every time: the dict grows
            totals.add("all")
        done.set()

    writer = threading.Thread(target=add)
    writer.start()
    reads = 0
    while not done.is_set():
        snap = totals.snapshot()
        assert sum(n for name, n in snap.items() if name != "all") >= snap.get("all", 0)  # one instant
        reads += 1
    writer.join()
    assert totals.get("all") == 20_000 and len(totals.snapshot("name")) == 20_000
    assert reads > 0


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"data": []}, headers={"ratelimit": "limit=100000, remaining=99999, reset=1"}
    )


def test_client_totals_are_read_from_another_thread_while_its_loop_calls_close() -> None:
    client = CloseClient("http://close.test/api/v1/", "key", transport=httpx.MockTransport(_answer))
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()

    async def calls() -> None:
        paths = [f"lead/lead_{i}/" for i in range(200)] + [f"contact/cont_{i}/" for i in range(200)]
        await asyncio.gather(*(client.get(p) for p in paths), *(client.put(p, {}) for p in paths))
        await asyncio.gather(*(client.post("data/search/", {}) for _ in range(100)))

    try:
        future = asyncio.run_coroutine_threadsafe(calls(), loop)
        seen: list[dict[str, float]] = []
        while not future.done():
            seen.append(client_counters(client))  # what the job's metrics read, on this thread
        future.result()
    finally:
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join()
    final = client_counters(client)
    assert {k: v for k, v in final.items() if v} == {
        m.CALLS_PREFIX + "read": 400,
        m.CALLS_PREFIX + "lead_write": 200,
        m.CALLS_PREFIX + "contact_write": 200,
        m.CALLS_PREFIX + "search": 100,
    }
    assert client.calls == 900 and client.counters()["calls"] == 900
    assert sum(client.calls_by_endpoint.values()) == 900
    assert all(s[m.CALLS_PREFIX + "search"] <= 100 for s in seen if m.CALLS_PREFIX + "search" in s)


# --------------------------------------------------------------------------- a whole run


@pytest.mark.integration
def test_a_runs_source_and_client_counters_reach_its_summary(
    sim, tmp_path: Path, monkeypatch, capsys
) -> None:
    config, _ = sim_config(sim, tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(
        inputs / "events.jsonl",
        [
            {
                "type": "identify",
                "messageId": f"m{i}",
                "userId": f"u{i}",
                "traits": {"email": f"u{i}@x.example"},
            }
            for i in range(5)
        ],
    )
    (inputs / "_SUCCESS").write_text("")  # matched, of no known format: counted under close_sync.sources
    monkeypatch.setenv("CLOSE_API_KEY", sim.api_key)
    request = RunRequest(
        source=SourceOptions(source="files", input=str(inputs / "*")),
        close_url=sim.base_url,
        key_source=KeySource(),
        dead_letter_dir=str(tmp_path / "dead"),
        progress=False,
    )
    assert run(config, request, show_summary=True) == 0
    text = capsys.readouterr().out
    assert "files of no known format, not read" in text
    calls = next(line for line in text.splitlines() if "calls total" in line)
    assert int(calls.split("│")[-2].strip().replace(",", "")) > 0


# --------------------------------------------------------------------------- counts deferred or collected


class _CountDeferred(beam.DoFn):
    def process(self, item: int):
        with m.deferred():
            for _ in range(item):
                m.counter(m.EVENTS_READ).inc()
            with m.deferred():  # nested: the outer one hands on
                m.counter(m.EVENTS_DUPLICATE).inc(2)
            yield item


def test_counts_deferred_inside_a_bundle_reach_beam_and_the_local_totals_once() -> None:
    m.reset_local_totals()
    p = beam.Pipeline(runner=FnApiRunner())
    _ = p | beam.Create([3, 4]) | beam.ParDo(_CountDeferred())
    result = p.run()
    result.wait_until_finish()
    assert summary.collect(result) == {m.EVENTS_READ: 7, m.EVENTS_DUPLICATE: 4}
    assert m.local_totals() == {m.EVENTS_READ: 7, m.EVENTS_DUPLICATE: 4}


def test_collected_counts_go_to_the_caller_not_to_beam_until_handed_on() -> None:
    m.reset_local_totals()
    with m.deferred():
        with m.collected() as counts:
            m.counter(m.EVENTS_READ).inc(5)
            with m.deferred():
                m.counter(m.EVENTS_READ).inc()
        m.counter(m.EVENTS_FILTERED).inc()
    assert counts == {m.EVENTS_READ: 6}
    assert m.local_totals() == {m.EVENTS_FILTERED: 1}  # the outer deferred's own count only
    m.count(counts)
    assert m.local_totals() == {m.EVENTS_FILTERED: 1, m.EVENTS_READ: 6}
