"""The skip-or-fail rule of the real-server fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import KAFKA_JARS_ENV, kafka_jars, require_binary


def test_missing_server_binary_skips_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOSE_SYNC_REQUIRE_SERVERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Kafka broker"):
        require_binary("/nonexistent/java", "Java (runs the Kafka broker)")


def test_missing_server_binary_fails_the_test_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOSE_SYNC_REQUIRE_SERVERS", "1")
    with pytest.raises(pytest.fail.Exception, match="CLOSE_SYNC_REQUIRE_SERVERS"):
        require_binary("/nonexistent/java", "Java (runs the Kafka broker)")


def test_present_binary_resolves_to_its_path() -> None:
    assert require_binary("sh", "a shell").endswith("/sh")


def test_missing_kafka_jars_skip_the_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLOSE_SYNC_REQUIRE_SERVERS", raising=False)
    monkeypatch.setenv(KAFKA_JARS_ENV, str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="make engines"):
        kafka_jars()


def test_missing_kafka_jars_fail_the_test_when_servers_are_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLOSE_SYNC_REQUIRE_SERVERS", "1")
    monkeypatch.setenv(KAFKA_JARS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(pytest.fail.Exception, match="CLOSE_SYNC_REQUIRE_SERVERS"):
        kafka_jars()


def test_kafka_jars_folder_is_the_one_the_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "kafka_2.13-4.4.0.jar").touch()
    monkeypatch.setenv(KAFKA_JARS_ENV, str(tmp_path))
    assert kafka_jars() == tmp_path
