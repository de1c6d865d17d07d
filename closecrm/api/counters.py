"""Running totals that one thread adds to while another reads them.

The Close client counts on the thread of the event loop it runs on, and the job reports those counts
from a DoFn's own thread. Reading a plain dict (or Counter) while the loop adds a key to it can fail
("dictionary changed size during iteration") or see half an update; here every add and every read
holds one lock, and a read is a copy.
"""

from __future__ import annotations

import threading


class Totals:
    """Named running totals (ints or floats); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}

    def add(self, name: str, n: float = 1) -> None:
        with self._lock:
            self._totals[name] = self._totals.get(name, 0) + n

    def get(self, name: str) -> float:
        with self._lock:
            return self._totals.get(name, 0)

    def snapshot(self, prefix: str = "") -> dict[str, float]:
        """A copy of the totals whose names start with ``prefix``, with the prefix taken off."""
        with self._lock:
            return {name[len(prefix) :]: n for name, n in self._totals.items() if name.startswith(prefix)}
