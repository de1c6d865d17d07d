"""A periodic progress line on stderr while a local run works: events read, requests done of those sent,
Close API calls and their average rate, 429s, ETA."""

from __future__ import annotations

import glob
import gzip
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pipeline.summary import OUTCOME_KINDS
from transforms import metrics as m

Totals = Callable[[], dict[str, int]]


def count_input_events(pattern: str | None) -> int | None:
    """Events in a local files input, when that is cheap to know (JSON lines, Parquet); else None."""
    if not pattern or "://" in pattern:
        return None
    paths = sorted(glob.glob(pattern))
    if not paths:
        return None
    total = 0
    for path in paths:
        lower = path.lower()
        try:
            if lower.endswith(".parquet"):
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
            elif lower.endswith(".gz"):
                with gzip.open(path, "rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            elif lower.endswith((".jsonl", ".json", ".ndjson")):
                with open(path, "rb") as fh:
                    total += sum(1 for line in fh if line.strip())
            else:
                return None  # Avro: would mean reading it all
        except OSError:
            return None
    return total


def _calls(values: dict[str, int]) -> int:
    return sum(v for k, v in values.items() if k.startswith(m.CALLS_PREFIX))


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(values: dict[str, int], elapsed: float, total_events: int | None) -> str:
    """One line of counts that agree with each other and with the summary's rows.

    A request is "done" once it has an outcome (created, updated, unchanged, skipped or failed), so
    done never exceeds sent. The writer reports its calls together with its outcomes, so the call rate
    is the average since the start: a rate over the last few seconds would read 0 between reports.
    """
    read = values.get(m.EVENTS_READ, 0)
    done = sum(values.get(m.OUTCOME_PREFIX + k, 0) for k in OUTCOME_KINDS)
    failed = values.get(m.OUTCOME_PREFIX + "failed", 0)
    sent = values.get(m.REQUESTS_SENT, 0)
    calls = _calls(values)
    parts = [f"[{_eta(elapsed)}] events read {read:,}" + (f"/{total_events:,}" if total_events else "")]
    parts.append(f"requests done {done:,}/{sent:,} sent" + (f" ({failed:,} failed)" if failed else ""))
    parts.append(f"Close API calls {calls:,} ({calls / elapsed if elapsed > 0 else 0.0:.1f}/s)")
    parts.append(f"429s {values.get(m.API_429, 0):,}")
    if total_events and read < total_events and read and elapsed > 0:
        parts.append(f"ETA {_eta((total_events - read) * elapsed / read)} to read")
    elif sent and done < sent and done and elapsed > 0:
        # requests reach the writer once their input is read; pace on what the writer has done so far
        parts.append(f"ETA {_eta((sent - done) / (done / elapsed))}")
    return "progress: " + " · ".join(parts)


class ProgressReporter:
    """Polls counter totals every `interval` seconds on a daemon thread and prints one line each time."""

    def __init__(
        self,
        totals: Totals = m.local_totals,
        interval: float = 3.0,
        total_events: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self._totals = totals
        self._interval = interval
        self._total_events = total_events
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self.lines = 0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="close-sync-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.tick()

    def tick(self) -> None:
        values = self._totals()
        elapsed = time.monotonic() - self._started
        print(progress_line(values, elapsed, self._total_events), file=self._stream, flush=True)
        self.lines += 1


@contextmanager
def reporting(enabled: bool, input_glob: str | None = None, interval: float = 3.0) -> Iterator[None]:
    """Progress lines while the body runs (a local run: the workers share this process's counters)."""
    if not enabled:
        yield
        return
    m.reset_local_totals()
    reporter = ProgressReporter(interval=interval, total_events=count_input_events(input_glob))
    reporter.start()
    try:
        yield
    finally:
        reporter.stop()
