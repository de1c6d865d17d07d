"""Local streaming runs only: let the DirectRunner's Pub/Sub reader pull more than 10 messages at a time.

Beam's bundle-based DirectRunner reads Pub/Sub with ``pull(max_messages=10)`` once per reader bundle,
and runs a reader bundle only between the other stages' bundles: ~20 events/s on a laptop, whatever
the rest of the job could do. Dataflow and Flink use their own readers and are not affected.

That reader acknowledges a message as soon as it is pulled, so a local run that is killed can lose
what it had pulled and not yet written (SPEC: reported, not hidden). A larger pull widens that
window to ``LOCAL_PULL_MESSAGES`` messages, which is the trade for a reader that keeps up.

The same reader also leaked: every pull hands the next reader bundle an empty "unprocessed" bundle,
which Beam's watermark manager adds to the step's pending set and, because it has no elements, never
removes (``forget_consumed_empty_bundles``). A soak at 20 events/s grew by one ``_Bundle`` and one
``PBegin`` per pull, and every watermark refresh walked the whole set.
"""

from __future__ import annotations

from typing import Any

LOCAL_PULL_MESSAGES = 200


class _LargerPulls:
    """A SubscriberClient whose ``pull`` asks for at least ``size`` messages; the rest is delegated."""

    def __init__(self, client: Any, size: int) -> None:
        self._client = client
        self._size = size

    def pull(self, *args: Any, max_messages: int | None = None, **kwargs: Any) -> Any:
        return self._client.pull(*args, max_messages=max(max_messages or 0, self._size), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def forget_consumed_empty_bundles() -> None:
    """Patch the DirectRunner's watermark manager (idempotent; a no-op if Beam changed its shape): an empty
    input bundle leaves its step's pending set once consumed, as a bundle with elements always did.

    An empty bundle holds no element, so it never held a watermark back; only the Pub/Sub reader (and
    other root steps that hand themselves empty "unprocessed" bundles) ever put one in that set.
    """
    try:
        from apache_beam.runners.direct.watermark_manager import WatermarkManager
    except ImportError:  # pragma: no cover - another Beam layout
        return
    if getattr(WatermarkManager, "_close_sync_original_update_pending", None) is not None:
        return
    original = WatermarkManager.__dict__.get("_update_pending")
    if not callable(original):
        return

    def _update_pending(self: Any, input_committed_bundle: Any, applied_ptransform: Any, *args: Any) -> None:
        original(self, input_committed_bundle, applied_ptransform, *args)
        if input_committed_bundle is not None and not input_committed_bundle.has_elements():
            self._transform_to_watermarks[applied_ptransform].remove_pending(input_committed_bundle)

    WatermarkManager._close_sync_original_update_pending = original
    WatermarkManager._update_pending = _update_pending


def raise_pull_size(size: int = LOCAL_PULL_MESSAGES) -> None:
    """Patch the DirectRunner's Pub/Sub read evaluator (idempotent; a no-op if Beam changed its shape)."""
    try:
        from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator
    except ImportError:  # pragma: no cover - another Beam layout: leave its reader alone
        return
    # Always wrap Beam's own getter (kept aside the first time), so a second call re-sizes, never nests.
    original = getattr(_PubSubReadEvaluator, "_close_sync_original", None)
    if original is None:
        original = _PubSubReadEvaluator.__dict__.get("_get_subscriber_client")
        if not isinstance(original, classmethod):
            return
        _PubSubReadEvaluator._close_sync_original = original
    getter = original.__func__

    def _get_subscriber_client(cls: Any, transform: Any) -> Any:
        return _LargerPulls(getter(cls, transform), size)

    _PubSubReadEvaluator._get_subscriber_client = classmethod(_get_subscriber_client)
