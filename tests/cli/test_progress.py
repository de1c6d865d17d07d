"""The progress line of local runs: what it counts and when it can give an ETA."""

from __future__ import annotations

import gzip
import io

from pipeline.progress import ProgressReporter, count_input_events, progress_line
from transforms import metrics as m


def test_line_shows_events_read_of_the_known_total_with_an_eta():
    values = {m.EVENTS_READ: 250, m.API_429: 3, m.CALLS_PREFIX + "search": 125}
    line = progress_line(values, elapsed=10.0, total_events=1000)
    assert "events read 250/1,000" in line
    assert "Close API calls 125 (12.5/s)" in line and "429s 3" in line
    assert "ETA 30s to read" in line


def test_once_everything_is_read_the_eta_follows_the_writer():
    values = {m.EVENTS_READ: 1000, m.REQUESTS_SENT: 400, m.OUTCOME_PREFIX + "created": 100}
    line = progress_line(values, elapsed=20.0, total_events=1000)
    assert "requests done 100/400 sent" in line
    assert "ETA 1m00s" in line


def test_the_numbers_agree_requests_done_never_pass_those_sent_and_calls_are_never_a_rate_of_zero():
    # outcomes and calls are reported together by the writer: a rate over the last tick would read 0
    values = {
        m.EVENTS_READ: 3000,
        m.REQUESTS_SENT: 400,
        m.OUTCOME_PREFIX + "unchanged": 150,
        m.OUTCOME_PREFIX + "created": 50,
        m.OUTCOME_PREFIX + "failed": 2,
        m.CALLS_PREFIX + "contact_write": 60,
    }
    line = progress_line(values, elapsed=30.0, total_events=3000)
    assert "requests done 202/400 sent (2 failed)" in line
    assert "Close API calls 60 (2.0/s)" in line
    assert "applied" not in line  # unchanged and failed requests are done, not applied


def test_unknown_input_size_gives_no_eta():
    assert "ETA" not in progress_line({m.EVENTS_READ: 5}, elapsed=1.0, total_events=None)


def test_counts_json_lines_and_gzip_inputs_but_not_remote_ones(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n{}\n\n{}\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write("{}\n{}\n")
    assert count_input_events(str(tmp_path / "*.jsonl*")) == 5
    assert count_input_events("gs://bucket/*.jsonl") is None
    assert count_input_events(str(tmp_path / "none-*.jsonl")) is None


def test_the_counters_feed_the_process_local_totals_the_reporter_reads():
    m.reset_local_totals()
    m.counter(m.EVENTS_READ).inc(7)
    m.counter(m.CALLS_PREFIX + "search").inc(2)
    out = io.StringIO()
    reporter = ProgressReporter(stream=out, total_events=14)
    reporter.start()
    reporter.tick()
    reporter.stop()
    assert "events read 7/14" in out.getvalue()
    assert out.getvalue().startswith("progress: ")
    m.reset_local_totals()
