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


def _reader_pending(result) -> int:  # noqa: ANN001
    """Bundles the local runner's watermark manager holds as pending for the Pub/Sub read step."""
    manager = result._evaluation_context._watermark_manager
    return max(
        len(tw._pending)
        for transform, tw in manager._transform_to_watermarks.items()
        if "ReadFromPubSub" in transform.full_label
    )


def test_the_reader_leaves_no_pending_bundle_behind_per_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    pulls = [0]

    class EmptySubscriber:
        def pull(self, **kwargs: Any) -> Any:
            pulls[0] += 1
            time.sleep(0.002)  # an empty pull, answered at once
            return SimpleNamespace(received_messages=[])

    monkeypatch.setattr(
        _PubSubReadEvaluator,
        "_get_subscriber_client_state_unlocked",
        classmethod(lambda cls, transform: SimpleNamespace(client=EmptySubscriber())),
    )
    from pipeline.runjob import local_runner

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    runner = local_runner(options, streaming=True)
    assert isinstance(runner, BundleBasedDirectRunner)
    p = beam.Pipeline(runner=runner, options=options)
    _ = p | beam.io.ReadFromPubSub(subscription="projects/close-sync-test/subscriptions/events") | beam.Map(len)
    result = p.run()
    try:
        deadline = time.monotonic() + 30
        while pulls[0] < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pulls[0] >= 300
        # Each pull's reader bundle hands the next one an empty "unprocessed" bundle; Beam adds it to the
        # step's pending set and, as it has no elements, never takes it out (one _Bundle + PBegin per pull).
        assert _reader_pending(result) <= 5, (_reader_pending(result), pulls[0])
    finally:
        result.cancel()
