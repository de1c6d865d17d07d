"""The local streaming runner's Pub/Sub reader asks for more than Beam's 10 messages per pull."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

from pipeline.local_pubsub import LOCAL_PULL_MESSAGES, raise_pull_size


class FakeSubscriber:
    def __init__(self) -> None:
        self.pulls: list[dict[str, Any]] = []
        self.acked: list[str] = []

    def pull(self, **kwargs: Any) -> str:
        self.pulls.append(kwargs)
        return "response"

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        self.acked += ack_ids


def test_pulls_ask_for_the_local_size_and_everything_else_is_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSubscriber()
    monkeypatch.setattr(
        _PubSubReadEvaluator,
        "_get_subscriber_client_state_unlocked",
        classmethod(lambda cls, transform: SimpleNamespace(client=fake)),
    )
    raise_pull_size()
    raise_pull_size()  # idempotent: not wrapped twice
    client = _PubSubReadEvaluator._get_subscriber_client(object())
    assert client.pull(subscription="s", max_messages=10, timeout=30) == "response"
    assert fake.pulls == [{"subscription": "s", "max_messages": LOCAL_PULL_MESSAGES, "timeout": 30}]
    client.acknowledge(subscription="s", ack_ids=["a"])
    assert fake.acked == ["a"]

    raise_pull_size(5)  # never fewer than the reader asked for
    _PubSubReadEvaluator._get_subscriber_client(object()).pull(subscription="s", max_messages=10)
    assert fake.pulls[-1]["max_messages"] == 10
    raise_pull_size()
