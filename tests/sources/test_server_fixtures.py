"""The skip-or-fail rule of the real-server fixtures."""

from __future__ import annotations

import pytest

from tests.servers import require_binary


def test_missing_server_binary_skips_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOSE_SYNC_REQUIRE_SERVERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Kafka broker"):
        require_binary("/nonexistent/noida-db", "Kafka broker")


def test_missing_server_binary_fails_the_test_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOSE_SYNC_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match="CLOSE_SYNC_REQUIRE_SERVERS"):
        require_binary("/nonexistent/noida-db", "Kafka broker")


def test_present_binary_resolves_to_its_path() -> None:
    assert require_binary("sh", "a shell").endswith("/sh")
