"""closecrm.blob: what is packed comes back equal, from any thread, and smaller than its pickle."""

from __future__ import annotations

import pickle
import threading

from closecrm.blob import pack, unpack
from closecrm.model import UpsertRequest


def test_a_pack_unpacks_to_an_equal_value():
    value = [UpsertRequest(contact_user_id=f"u{i}", contact_emails=(f"u{i}@example.com",)) for i in range(200)]
    blob = pack(value)
    assert unpack(blob) == value
    assert len(blob) < len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) / 3  # alike values pack small


def test_threads_pack_and_unpack_at_once_without_mixing_their_values():
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(300):
            value = {"thread": n, "i": i, "text": "x" * (i % 97)}
            if unpack(pack(value)) != value:
                errors.append(f"{n}:{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
