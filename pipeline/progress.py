"""A periodic progress line on stderr while a local run works: events read, requests applied, calls/s, 429s, ETA."""

from __future__ import annotations

import glob
import gzip
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

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


def progress_line(values: dict[str, int], elapsed: float, calls_per_s: float, total_events: int | None) -> str:
    read = values.get(m.EVENTS_READ, 0)
    done = sum(values.get(m.OUTCOME_PREFIX + k, 0) for k in ("created", "updated", "unchanged", "skipped", "failed"))
    sent = values.get(m.REQUESTS_SENT, 0)
    parts = [f"[{_eta(elapsed)}] events read {read:,}" + (f"/{total_events:,}" if total_events else "")]
    parts.append(f"requests applied {done:,}" + (f"/{sent:,} sent" if sent else ""))
    parts.append(f"{calls_per_s:.1f} calls/s")
    parts.append(f"{values.get(m.API_429, 0):,} 429s")
    parts.append(f"{values.get(m.EVENTS_DEAD_LETTERED, 0) + values.get(m.OUTCOME_PREFIX + 'failed', 0):,} failed")
    if total_events and read < total_events and read and elapsed > 0:
        parts.append(f"ETA {_eta((total_events - read) * elapsed / read)} to read")
    elif sent and done < sent and elapsed > 0:
        # requests arrive at the writer once their input is read; pace on what the writer has done so far
        rate = done / elapsed if done else 0.0
        if rate:
            parts.append(f"ETA {_eta((sent - done) / rate)}")
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
        self._last_calls = 0
        self._last_at = 0.0
        self.lines = 0

    def start(self) -> None:
        self._started = self._last_at = time.monotonic()
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
        now = time.monotonic()
        calls = _calls(values)
        rate = (calls - self._last_calls) / (now - self._last_at) if now > self._last_at else 0.0
        self._last_calls, self._last_at = calls, now
        print(progress_line(values, now - self._started, rate, self._total_events), file=self._stream, flush=True)
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
