"""Job-level faults: 5xx, ambiguous writes, search lag, a 429 storm mid-run and latency jitter change nothing.

The reference is the same workload run through the same job on a clean simulator. A request that
exhausts its retries is dead-lettered; the test then replays that file (``pipeline.replay``) and
prints how many it had to replay, so the observation is visible rather than hidden.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.replay import replay_file
from pipeline.runjob import shape_for
from pipeline.sources import SourceOptions
from tests.pipeline.helpers import write_jsonl
from tests.reliability.rel_helpers import (
    applied_ids,
    counters_line,
    dead_letters,
    duplicates,
    fresh,
    projection,
    run_job,
    w1_events,
    w2_events,
)
from transforms import metrics as m

pytestmark = pytest.mark.integration

# The engine waits up to settle_seconds (3 s) for search to show an ambiguous create; a 1 s lag
# exercises that path without making every ambiguous write cost the full settle time.
FAULTS: dict[str, Any] = {
    "fault_rate": 0.05,
    "search_lag": 1.0,
    "latency_ms": 2.0,
    "jitter_ms": 25.0,
    "storm_rate": 0.002,  # occasional short storms on top of the one started mid-run
    "storm_seconds": 0.5,
}


def reference(sim, events: list[dict], workdir: Path, monkeypatch) -> dict[str, Any]:  # noqa: ANN001
    config, cf = fresh(sim, workdir)
    path = write_jsonl(workdir / "events.jsonl", events)
    values = run_job(sim, config, SourceOptions(source="files", input=str(path)), workdir, monkeypatch)
    assert values.get(m.EVENTS_DEAD_LETTERED, 0) == 0
    return projection(sim, cf)




@pytest.mark.parametrize(
    ("workload", "seed", "ambiguous_rate"),
    [
        pytest.param("w1", 11, 0.0, id="w1-5xx-only"),
        pytest.param("w2", 23, 0.0, id="w2-5xx-only"),
        # An ambiguous create search cannot confirm in time is dead-lettered, never created twice
        # (closecrm.engine: unsettled identities); the replay below then finds it.
        pytest.param("w1", 11, 0.02, id="w1-ambiguous"),
        pytest.param("w2", 23, 0.02, id="w2-ambiguous"),
    ],
)
def test_faults_end_in_the_reference_state_with_no_duplicates_and_every_event_accounted_for(
    sim, tmp_path, monkeypatch, workload, seed, ambiguous_rate, capsys
):
    events = w1_events() if workload == "w1" else w2_events()
    expected = reference(sim, events, tmp_path / "clean", monkeypatch)

    work = tmp_path / "faults"
    config, cf = fresh(sim, work)
    path = write_jsonl(work / "events.jsonl", events)
    sim.configure(**FAULTS, ambiguous_rate=ambiguous_rate, random_seed=seed)
    storm = threading.Timer(0.8, sim.start_storm, args=(1.5,))  # a 429 storm in the middle of the run
    storm.start()
    try:
        values = run_job(sim, config, SourceOptions(source="files", input=str(path)), work, monkeypatch)
    finally:
        storm.cancel()
    stats = sim.stats()
    sim.configure(
        fault_rate=0.0, ambiguous_rate=0.0, storm_rate=0.0, search_lag=0.0, latency_ms=0.0, jitter_ms=0.0
    )

    letters = dead_letters(work)
    applied = applied_ids(work)
    read = values.get(m.EVENTS_READ, 0)
    assert read == len(events)
    assert len(applied) == len(set(applied)), "an event was applied twice"
    skipped = values.get(m.EVENTS_SKIPPED, 0) + values.get(m.EVENTS_DUPLICATE, 0)
    dead_ids = {e for letter in letters for e in letter.get("event_ids") or []}
    assert len(set(applied)) + skipped + len(dead_ids) == read, counters_line(values)
    assert set(applied) | dead_ids <= {e["messageId"] for e in events}

    replayed = 0
    if letters:  # a request that exhausted its retries: replay it, as an operator would
        spec = shape_for(config, _request(sim, work), streaming=False).engine
        for letter_file in sorted((work / "dead").rglob("*.jsonl")):
            report = replay_file(config, spec, str(letter_file), None)
            assert report.failed == 0, report.line()
            replayed += report.letters

    assert duplicates(sim, cf) == {"leads": [], "contacts": []}
    assert projection(sim, cf) == expected
    with capsys.disabled():
        print(
            f"\n[faults {workload} ambiguous={ambiguous_rate}] {counters_line(values)}; sim 5xx/ambiguous/429: "
            f"{stats.get('faults', stats.get('by_status', {}))}; dead-lettered then replayed: {replayed} "
            f"{sorted({(letter.get('stage'), letter.get('reason')) for letter in letters})}"
        )


def _request(sim, work: Path):  # noqa: ANN001, ANN202
    from closecrm.wiring import KeySource
    from pipeline.runjob import RunRequest

    return RunRequest(
        source=SourceOptions(source="files", input="unused"), close_url=sim.base_url, key_source=KeySource()
    )
