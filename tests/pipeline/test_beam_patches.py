"""pipeline.beam_patches: each patch applies on the runner that needs it, has the effect it is for, and
raises, naming Beam's version and the target, when its target is missing or has changed shape."""

from __future__ import annotations

import gc
import logging
import sys
import time
from types import SimpleNamespace
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator
from apache_beam.runners.direct.watermark_manager import WatermarkManager
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory

from pipeline import beam_patches
from pipeline.beam_patches import (
    LOCAL_GC_THRESHOLD,
    LOCAL_PULL_MESSAGES,
    LOCAL_STATE_SAMPLING_MS,
    BeamPatchError,
    apply_for,
    forget_consumed_empty_bundles,
    larger_pubsub_pulls,
    no_state_cache,
    relaxed_gc,
    shorter_state_sampling,
)

BEAM_STATE_CACHE_SIZE_MB = 100  # Beam's own value


@pytest.fixture
def beam_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's own code at every patch target for the test, whatever ran before it; put back after it."""
    for cls, name in (
        (_PubSubReadEvaluator, "_get_subscriber_client"),
        (WatermarkManager, "_update_pending"),
    ):
        monkeypatch.setattr(cls, name, beam_patches._beam_original(cls, name, name))
    monkeypatch.setattr(worker_handlers, "STATE_CACHE_SIZE_MB", BEAM_STATE_CACHE_SIZE_MB)
    init = statesampler.StateSampler.__init__
    beam_default = statesampler.DEFAULT_SAMPLING_PERIOD_MS
    monkeypatch.setattr(init, "__defaults__", (*init.__defaults__[:-1], beam_default))
    monkeypatch.setattr(init, beam_patches._WRAPS, beam_default, raising=False)


def _pulls_positionally(self: Any, timestamp_attribute: Any) -> Any:
    """A reader that pulls through the subscriber client, passing max_messages by position."""
    client = self._get_subscriber_client(self._applied_ptransform)
    return client.pull(self._sub_name, 10, 30)


def fails_naming(target: str) -> Any:
    return pytest.raises(BeamPatchError, match=rf"{target}.* on apache-beam {beam.__version__}: ")


# --------------------------------------------------------------------------- larger Pub/Sub pulls


class FakeSubscriber:
    def __init__(self) -> None:
        self.pulls: list[dict[str, Any]] = []
        self.acked: list[str] = []

    def pull(self, **kwargs: Any) -> str:
        self.pulls.append(kwargs)
        return "response"

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        self.acked += ack_ids


def test_pubsub_pulls_ask_for_the_local_size_and_everything_else_is_delegated(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeSubscriber()
    monkeypatch.setattr(
        _PubSubReadEvaluator,
        "_get_subscriber_client_state_unlocked",
        classmethod(lambda cls, transform: SimpleNamespace(client=fake)),
    )
    _PubSubReadEvaluator._get_subscriber_client(object()).pull(subscription="s", max_messages=10)
    assert fake.pulls[-1]["max_messages"] == 10  # Beam's own reader, before the patch

    larger_pubsub_pulls()
    larger_pubsub_pulls()  # idempotent: not wrapped twice
    client = _PubSubReadEvaluator._get_subscriber_client(object())
    assert client.pull(subscription="s", max_messages=10, timeout=30) == "response"
    assert fake.pulls[-1] == {"subscription": "s", "max_messages": LOCAL_PULL_MESSAGES, "timeout": 30}
    client.acknowledge(subscription="s", ack_ids=["a"])
    assert fake.acked == ["a"]

    larger_pubsub_pulls(5)  # never fewer than the reader asked for
    _PubSubReadEvaluator._get_subscriber_client(object()).pull(subscription="s", max_messages=10)
    assert fake.pulls[-1]["max_messages"] == 10


@pytest.mark.parametrize(
    "name, replacement",
    [
        ("_get_subscriber_client", None),
        ("_get_subscriber_client", staticmethod(lambda transform: None)),
        ("_get_subscriber_client", classmethod(lambda cls, transform, lock: None)),
        ("_read_from_pubsub", lambda self, timestamp_attribute: []),  # reads some other way
        ("_read_from_pubsub", _pulls_positionally),
    ],
    ids=["missing", "not a classmethod", "other parameters", "not on the read path", "max_messages by position"],
)
def test_pubsub_pulls_fail_loudly_when_beam_changed(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch, name: str, replacement: Any
) -> None:
    if replacement is None:
        monkeypatch.delattr(_PubSubReadEvaluator, name)
    else:
        monkeypatch.setattr(_PubSubReadEvaluator, name, replacement)
    with fails_naming("_PubSubReadEvaluator._get_subscriber_client"):
        larger_pubsub_pulls()


# --------------------------------------------------------------------------- empty bundles leave the pending set


def _reader_pending(result: Any) -> int:
    """Bundles the local runner's watermark manager holds as pending for the Pub/Sub read step."""
    manager = result._evaluation_context._watermark_manager
    return max(
        len(tw._pending)
        for transform, tw in manager._transform_to_watermarks.items()
        if "ReadFromPubSub" in transform.full_label
    )


def _pending_after_empty_pulls(
    monkeypatch: pytest.MonkeyPatch, patched: bool, pulls_wanted: int = 300
) -> int:
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
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    runner = BundleBasedDirectRunner()
    p = beam.Pipeline(runner=runner, options=options)
    _ = (
        p
        | beam.io.ReadFromPubSub(subscription="projects/close-sync-test/subscriptions/events")
        | beam.Map(len)
    )
    if patched:
        with apply_for(runner):
            result = p.run()
    else:
        result = p.run()
    try:
        deadline = time.monotonic() + 30
        while pulls[0] < pulls_wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pulls[0] >= pulls_wanted
        return _reader_pending(result)
    finally:
        result.cancel()


def test_the_reader_leaves_no_pending_bundle_behind_per_pull(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each pull's reader bundle hands the next one an empty "unprocessed" bundle; Beam adds it to the
    # step's pending set and, as it has no elements, never takes it out.
    assert _pending_after_empty_pulls(monkeypatch, patched=False, pulls_wanted=100) >= 50
    assert _pending_after_empty_pulls(monkeypatch, patched=True) <= 5


@pytest.mark.parametrize(
    "cls, name, replacement",
    [
        (WatermarkManager, "_update_pending", None),
        (WatermarkManager, "_update_pending", lambda self, applied_ptransform, bundle: None),
        (WatermarkManager, "update_watermarks", lambda self, *args: None),  # no longer calls it
        (
            beam_patches.importlib.import_module(WatermarkManager.__module__)._TransformWatermarks,
            "remove_pending",
            None,
        ),
    ],
    ids=["missing", "other parameters", "not called", "no remove_pending"],
)
def test_forgetting_empty_bundles_fails_loudly_when_beam_changed(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch, cls: type, name: str, replacement: Any
) -> None:
    if replacement is None:
        monkeypatch.delattr(cls, name)
    else:
        monkeypatch.setattr(cls, name, replacement)
    with fails_naming("WatermarkManager._update_pending"):
        forget_consumed_empty_bundles()


def test_a_missing_beam_module_fails_loudly(beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, WatermarkManager.__module__, None)
    with fails_naming("WatermarkManager._update_pending") as info:
        forget_consumed_empty_bundles()
    assert "is missing" in str(info.value)


# --------------------------------------------------------------------------- FnApiRunner: state cache, sampler


def _state_cache_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the state caches the in-process worker builds while a small job runs."""
    sizes: list[int] = []
    real = worker_handlers.StateCache

    def recording(size: int, *args: Any, **kwargs: Any) -> Any:
        sizes.append(size)
        return real(size, *args, **kwargs)

    monkeypatch.setattr(worker_handlers, "StateCache", recording)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | beam.Create([("a", 1), ("a", 2)]) | beam.GroupByKey()
    return sizes


def test_the_in_process_worker_caches_no_state(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _state_cache_sizes(monkeypatch)[-1] > 0  # Beam's own
    no_state_cache()
    assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    assert _state_cache_sizes(monkeypatch)[-1] == 0


def test_the_state_sampler_samples_more_often(beam_as_shipped: None) -> None:
    def period() -> int:
        return statesampler.StateSampler("test", CounterFactory()).sampling_period_ms

    assert period() == statesampler.DEFAULT_SAMPLING_PERIOD_MS
    shorter_state_sampling()
    shorter_state_sampling()  # idempotent
    assert period() == LOCAL_STATE_SAMPLING_MS
    shorter_state_sampling(20)
    assert period() == 20


@pytest.mark.parametrize(
    "module, name, replacement",
    [
        (worker_handlers, "STATE_CACHE_SIZE_MB", None),
        (worker_handlers, "STATE_CACHE_SIZE_MB", "100"),
        (worker_handlers.EmbeddedWorkerHandler, "__init__", lambda self, *args: None),  # no longer reads it
    ],
    ids=["missing", "not an int", "not read"],
)
def test_no_state_cache_fails_loudly_when_beam_changed(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch, module: Any, name: str, replacement: Any
) -> None:
    if replacement is None:
        monkeypatch.delattr(module, name)
    else:
        monkeypatch.setattr(module, name, replacement)
    with fails_naming("worker_handlers.STATE_CACHE_SIZE_MB"):
        no_state_cache()


@pytest.mark.parametrize(
    "replacement",
    [
        None,  # StateSampler inherits its __init__
        lambda self, prefix, counter_factory: None,
        lambda self, prefix, counter_factory, sampling_period_ms=50: None,  # another default: another meaning
    ],
    ids=["missing", "no sampling period", "other default"],
)
def test_shorter_state_sampling_fails_loudly_when_beam_changed(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch, replacement: Any
) -> None:
    if replacement is None:
        monkeypatch.delattr(statesampler.StateSampler, "__init__")
    else:
        monkeypatch.setattr(statesampler.StateSampler, "__init__", replacement)
    with fails_naming("StateSampler.__init__"):
        shorter_state_sampling()


def test_relaxed_gc_collects_rarely_and_leaves_older_objects_out_until_the_block_ends() -> None:
    before = gc.get_threshold()
    with relaxed_gc():
        assert gc.get_threshold() == LOCAL_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


# --------------------------------------------------------------------------- which runner gets which patches


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The patches apply_for applies, by name (the patches themselves are not run)."""
    names: list[str] = []

    def spy(name: str) -> Any:
        return lambda: names.append(name)

    for kind, patches in list(beam_patches.PATCHES.items()):
        monkeypatch.setitem(beam_patches.PATCHES, kind, tuple(spy(fn.__name__) for fn in patches))
    return names


def test_the_local_streaming_runner_gets_the_pubsub_and_watermark_patches(applied: list[str]) -> None:
    threshold = gc.get_threshold()
    with apply_for(BundleBasedDirectRunner()):
        assert gc.get_threshold() == threshold  # run() returns at once: GC stays as it is
    assert applied == ["larger_pubsub_pulls", "forget_consumed_empty_bundles"]


def test_the_local_batch_runner_gets_the_worker_patches_and_relaxed_gc(applied: list[str]) -> None:
    with apply_for(FnApiRunner()):
        assert gc.get_threshold() == LOCAL_GC_THRESHOLD
    assert applied == ["no_state_cache", "shorter_state_sampling"]


@pytest.mark.parametrize(
    "runner", [None, SimpleNamespace(name="DataflowRunner")], ids=["Beam's choice", "other"]
)
def test_other_runners_get_no_patch(applied: list[str], runner: Any) -> None:
    threshold = gc.get_threshold()
    with apply_for(runner):
        assert gc.get_threshold() == threshold
    assert applied == []


def test_apply_for_runs_the_real_patches_and_fails_before_the_job_when_one_does_not_fit(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with apply_for(FnApiRunner()):
        assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    monkeypatch.delattr(worker_handlers, "STATE_CACHE_SIZE_MB")
    ran = False
    with fails_naming("STATE_CACHE_SIZE_MB"), apply_for(FnApiRunner()):
        ran = True
    assert not ran
    assert beam_patches.PATCHES == {
        "bundle_based": (larger_pubsub_pulls, forget_consumed_empty_bundles),
        "fn_api": (no_state_cache, shorter_state_sampling),
    }


# --------------------------------------------------------------------------- what apply_for logs


PATCH_LOG = "pipeline.beam_patches"


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PATCH_LOG and r.levelno == level]


def _applied_patches(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The patch named by each INFO line, in order."""
    return [line.split()[2] for line in _lines(caplog, logging.INFO)]


@pytest.mark.parametrize("installed", ["2.78.0", "3.77.1", "2.7.0", "2.770.0", "nightly"])
def test_another_beam_minor_version_gets_one_warning_naming_both(
    applied: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, installed: str
) -> None:
    monkeypatch.setattr(beam_patches, "BEAM_VERSION", installed)
    with caplog.at_level(logging.WARNING, logger=PATCH_LOG), apply_for(BundleBasedDirectRunner()):
        pass
    (line,) = _lines(caplog, logging.WARNING)
    assert f"apache-beam {installed} is installed" in line
    assert f"written for apache-beam {beam_patches.WRITTEN_FOR}.x" in line
    assert "may not apply" in line
    assert applied == ["larger_pubsub_pulls", "forget_consumed_empty_bundles"]  # they still check and apply


@pytest.mark.parametrize("installed", [f"{beam_patches.WRITTEN_FOR}.0", f"{beam_patches.WRITTEN_FOR}.2rc1"])
def test_the_written_for_minor_version_gets_no_warning(
    applied: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, installed: str
) -> None:
    monkeypatch.setattr(beam_patches, "BEAM_VERSION", installed)
    with caplog.at_level(logging.WARNING, logger=PATCH_LOG), apply_for(FnApiRunner()):
        pass
    assert _lines(caplog, logging.WARNING) == []


def test_a_runner_without_patches_gets_no_version_warning(
    applied: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(beam_patches, "BEAM_VERSION", "2.99.0")
    with caplog.at_level(logging.WARNING, logger=PATCH_LOG), apply_for(SimpleNamespace(name="DataflowRunner")):
        pass
    assert caplog.records == []


def test_a_failing_patch_names_the_version_the_module_sees(
    beam_as_shipped: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(beam_patches, "BEAM_VERSION", "2.78.0")
    monkeypatch.delattr(worker_handlers, "STATE_CACHE_SIZE_MB")
    with pytest.raises(BeamPatchError, match=r"on apache-beam 2\.78\.0: .* written for apache-beam 2\.77\.x"):
        no_state_cache()


def test_each_patch_applied_logs_one_line_and_applying_again_neither_re_applies_nor_logs(
    beam_as_shipped: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PATCH_LOG)
    with apply_for(BundleBasedDirectRunner()):
        pass
    assert _applied_patches(caplog) == ["larger_pubsub_pulls", "forget_consumed_empty_bundles"]
    assert all("applied: " in line for line in _lines(caplog, logging.INFO))
    installed = (
        _PubSubReadEvaluator.__dict__["_get_subscriber_client"],
        WatermarkManager.__dict__["_update_pending"],
    )

    caplog.clear()
    with apply_for(BundleBasedDirectRunner()):
        pass
    assert _applied_patches(caplog) == []
    assert (
        _PubSubReadEvaluator.__dict__["_get_subscriber_client"],
        WatermarkManager.__dict__["_update_pending"],
    ) == installed  # the very functions installed the first time
    assert not hasattr(installed[1].__dict__[beam_patches._WRAPS], beam_patches._WRAPS)  # wraps Beam's own


def test_the_batch_runner_patches_log_once_and_relaxed_gc_once_per_run(
    beam_as_shipped: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PATCH_LOG)
    with apply_for(FnApiRunner()):
        pass
    assert _applied_patches(caplog) == ["no_state_cache", "shorter_state_sampling", "relaxed_gc"]
    defaults = statesampler.StateSampler.__init__.__defaults__

    caplog.clear()
    with apply_for(FnApiRunner()):
        pass
    assert _applied_patches(caplog) == ["relaxed_gc"]  # undone at the end of each run, so applied again
    assert statesampler.StateSampler.__init__.__defaults__ is defaults
    assert getattr(statesampler.StateSampler.__init__, beam_patches._WRAPS) == statesampler.DEFAULT_SAMPLING_PERIOD_MS


def test_a_patch_with_another_setting_is_applied_and_logged_again(
    beam_as_shipped: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PATCH_LOG)
    shorter_state_sampling()
    shorter_state_sampling(20)
    shorter_state_sampling(20)
    larger_pubsub_pulls()
    larger_pubsub_pulls(500)
    assert _applied_patches(caplog) == [
        "shorter_state_sampling",
        "shorter_state_sampling",
        "larger_pubsub_pulls",
        "larger_pubsub_pulls",
    ]
    getter = _PubSubReadEvaluator.__dict__["_get_subscriber_client"].__func__
    assert not hasattr(getattr(getter, beam_patches._WRAPS).__func__, beam_patches._WRAPS)  # never nested
