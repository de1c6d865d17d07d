"""Every change this job makes to Beam's own code or to process-wide runtime state, in one place.

All of them are for Beam's in-process runners only; ``apply_for(runner)`` applies the ones a runner needs:

- bundle-based DirectRunner (local streaming): ``larger_pubsub_pulls`` and ``forget_consumed_empty_bundles``;
- FnApiRunner (local batch): ``no_state_cache``, ``shorter_state_sampling``, and ``relaxed_gc`` while the
  job runs inside ``run()``;
- any other runner (Dataflow, Flink, ...), or None (Beam chooses): nothing.

Each patch reaches into Beam internals that have no compatibility promise. Before it changes anything it
checks that its target still exists and has the shape the patch was written for, and that Beam's code
still goes through it; when not, it raises ``BeamPatchError`` naming the Beam version and the target,
rather than leaving the job to run without its fix. setup.py pins Beam's minor version to the one they
were written for (``WRITTEN_FOR``); ``apply_for`` logs a warning when another minor version is installed.

Patches to Beam's classes and modules stay for the life of the process: a streaming run goes on after
``run()`` returns. Each is idempotent: one already in place with the same setting is left as it is, and a
different setting replaces it on Beam's original (never nests). Each logs one INFO line when it changes
something.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam.version

# The Beam release the patches were written against (setup.py pins this minor version).
WRITTEN_FOR = "2.77"
# The installed Beam release, as every check and message here sees it.
BEAM_VERSION: str = apache_beam.version.__version__

_LOG = logging.getLogger(__name__)

# The bundle-based DirectRunner pulls Pub/Sub messages ten at a time, once per reader bundle, and runs a
# reader bundle only between the other stages' bundles, so a local stream reads far slower than the job
# could work. That reader acknowledges what it pulls at once, so a local run that is killed loses what it
# had pulled and not written yet (a documented limit of local streaming); a larger pull widens that window
# to this many messages, the trade for a reader that keeps up.
LOCAL_PULL_MESSAGES = 200

# Longest wait, in ms, of the in-process worker's state sampler. Each bundle ends by joining the sampler's
# thread, which sleeps up to its sampling period (Beam's default: 200 ms), and that time is idle. The
# sampler only feeds the msec counters, which a local run does not need to be precise.
LOCAL_STATE_SAMPLING_MS = 10

# Cyclic GC during a local batch run. Python's default (a young collection every 700 allocations, full ones
# walking every object the process holds, Beam's and the libraries' included) spends much of the run
# walking objects that live until the end; the job's garbage is nearly all freed by reference counting.
LOCAL_GC_THRESHOLD = (50_000, 20, 100)

# Set on what a patch installed or changed: what Beam had there before (so a patch re-applied starts from it).
_WRAPS = "_close_sync_wraps"
# Set on a function a patch installed when it takes a setting: that setting (so the same one is not re-applied).
_SETTING = "_close_sync_setting"


class BeamPatchError(RuntimeError):
    """A patch's target is missing from Beam, or is not what the patch was written for."""


def _fail(target: str, problem: str) -> BeamPatchError:
    return BeamPatchError(
        f"close-sync cannot patch {target} on apache-beam {BEAM_VERSION}: {problem}. "
        f"The patch was written for apache-beam {WRITTEN_FOR}.x, the version setup.py pins "
        "(see pipeline/beam_patches.py)."
    )


def _applied(name: str, fixes: str) -> None:
    _LOG.info("Beam patch %s applied: %s", name, fixes)


def _minor(version: str) -> str | None:
    """``"2.77"`` for ``"2.77.0"``, ``"2.77.0rc1"`` or ``"2.77.0.dev"``; None when it is not a version."""
    match = re.match(r"(\d+)\.(\d+)(?!\d)", version)
    return f"{match[1]}.{match[2]}" if match else None


def check_version() -> bool:
    """Whether the installed Beam is the minor version the patches were written for; when not, says so loudly.

    The patches still verify their targets, and raise when one moved; this warns that one that still
    fits may now mean something else.
    """
    if _minor(BEAM_VERSION) == WRITTEN_FOR:
        return True
    _LOG.warning(
        "apache-beam %s is installed, but close-sync's patches of Beam's local runners were written for "
        "apache-beam %s.x (the version setup.py pins): they may not apply or may not fix what they are for",
        BEAM_VERSION,
        WRITTEN_FOR,
    )
    return False


def _import(target: str, module: str, *names: str) -> list[Any]:
    """Attributes ``names`` of ``module``, or BeamPatchError naming ``target``."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise _fail(target, f"module {module} is missing ({exc})") from None
    found = []
    for name in names:
        if not hasattr(mod, name):
            raise _fail(target, f"{module}.{name} is missing")
        found.append(getattr(mod, name))
    return found


def _parameters(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _calls(fn: Any, *names: str) -> bool:
    """Whether ``fn``'s own code refers to all of ``names`` (globals or attributes it reads)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code is not None and set(names) <= set(code.co_names)


def _passes_keyword(fn: Any, keyword: str) -> bool:
    """Whether ``fn``'s own code passes ``keyword`` by name in some call (a call's keyword names are a constant)."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code is not None and any(isinstance(c, tuple) and keyword in c for c in code.co_consts)


def _beam_original(cls: type, name: str, target: str) -> Any:
    """``cls.__dict__[name]`` as Beam defines it, even when a patch of ours stands in its place."""
    current = cls.__dict__.get(name)
    if current is None:
        raise _fail(target, "it is missing")
    inner = current.__func__ if isinstance(current, classmethod | staticmethod) else current
    return getattr(inner, _WRAPS, current)


# --------------------------------------------------------------------------- bundle-based DirectRunner


class _LargerPulls:
    """A SubscriberClient whose ``pull`` asks for at least ``size`` messages; the rest is delegated."""

    def __init__(self, client: Any, size: int) -> None:
        self._client = client
        self._size = size

    def pull(self, *args: Any, max_messages: int | None = None, **kwargs: Any) -> Any:
        return self._client.pull(*args, max_messages=max(max_messages or 0, self._size), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def larger_pubsub_pulls(size: int = LOCAL_PULL_MESSAGES) -> None:
    """The DirectRunner's Pub/Sub reader asks each pull for at least ``size`` messages.

    Target: ``_PubSubReadEvaluator._get_subscriber_client`` (a classmethod of ``transform``), which the
    evaluator's ``_read_from_pubsub`` calls for the client it pulls from.
    """
    target = "apache_beam.runners.direct.transform_evaluator._PubSubReadEvaluator._get_subscriber_client"
    (evaluator,) = _import(target, "apache_beam.runners.direct.transform_evaluator", "_PubSubReadEvaluator")
    original = _beam_original(evaluator, "_get_subscriber_client", target)
    if not isinstance(original, classmethod):
        raise _fail(target, f"it is a {type(original).__name__}, not a classmethod")
    if _parameters(original.__func__) != ["cls", "transform"]:
        raise _fail(target, f"its parameters are {_parameters(original.__func__)}, not (cls, transform)")
    reader = getattr(evaluator, "_read_from_pubsub", None)
    if not _calls(reader, "_get_subscriber_client", "pull"):
        raise _fail(target, "_PubSubReadEvaluator._read_from_pubsub no longer pulls through it")
    if not _passes_keyword(reader, "max_messages"):
        raise _fail(target, "_PubSubReadEvaluator._read_from_pubsub no longer passes pull() max_messages by name")
    current = evaluator.__dict__["_get_subscriber_client"]
    if getattr(getattr(current, "__func__", None), _SETTING, None) == size:
        return
    getter = original.__func__

    def _get_subscriber_client(cls: Any, transform: Any) -> Any:
        return _LargerPulls(getter(cls, transform), size)

    setattr(_get_subscriber_client, _WRAPS, original)
    setattr(_get_subscriber_client, _SETTING, size)
    evaluator._get_subscriber_client = classmethod(_get_subscriber_client)
    _applied("larger_pubsub_pulls", f"the local Pub/Sub reader pulls at least {size} messages at a time, not 10")


def forget_consumed_empty_bundles() -> None:
    """The DirectRunner's watermark manager takes an empty input bundle out of its step's pending set once
    it is consumed, as it always does for a bundle with elements.

    Every Pub/Sub pull hands the next reader bundle an empty "unprocessed" bundle, which Beam adds to the
    step's pending set and, having no elements, never removes: one ``_Bundle`` and ``PBegin`` more per pull
    for as long as the job runs, and every watermark refresh walks the whole set. An empty bundle holds no
    element, so it never held a watermark back.

    Target: ``WatermarkManager._update_pending(self, input_committed_bundle, applied_ptransform, ...)``,
    called by ``WatermarkManager.update_watermarks``.
    """
    target = "apache_beam.runners.direct.watermark_manager.WatermarkManager._update_pending"
    manager, step_watermarks = _import(
        target, "apache_beam.runners.direct.watermark_manager", "WatermarkManager", "_TransformWatermarks"
    )
    original = _beam_original(manager, "_update_pending", target)
    if not callable(original):
        raise _fail(target, f"it is a {type(original).__name__}, not a function")
    if _parameters(original)[:3] != ["self", "input_committed_bundle", "applied_ptransform"]:
        raise _fail(target, f"its parameters are {_parameters(original)}")
    if not _calls(getattr(manager, "update_watermarks", None), "_update_pending"):
        raise _fail(target, "WatermarkManager.update_watermarks no longer calls it")
    if not callable(getattr(step_watermarks, "remove_pending", None)):
        raise _fail(target, "_TransformWatermarks.remove_pending is missing")
    if not _calls(getattr(manager, "__init__", None), "_transform_to_watermarks"):
        raise _fail(target, "WatermarkManager no longer keeps _transform_to_watermarks")
    if hasattr(manager.__dict__["_update_pending"], _WRAPS):
        return

    def _update_pending(self: Any, input_committed_bundle: Any, applied_ptransform: Any, *args: Any) -> None:
        original(self, input_committed_bundle, applied_ptransform, *args)
        if input_committed_bundle is not None and not input_committed_bundle.has_elements():
            self._transform_to_watermarks[applied_ptransform].remove_pending(input_committed_bundle)

    setattr(_update_pending, _WRAPS, original)
    manager._update_pending = _update_pending
    _applied(
        "forget_consumed_empty_bundles",
        "the empty bundle each Pub/Sub pull leaves no longer stays in the local watermark manager's pending set",
    )


# --------------------------------------------------------------------------- FnApiRunner


def no_state_cache() -> None:
    """The in-process worker caches no user state.

    That cache weighs every value it caches by walking it (and what it refers to, module globals
    included) on every call, which dominates a local batch run's CPU; the runner's state is in this
    process's memory already, so the cache saves nothing there.

    Target: ``worker_handlers.STATE_CACHE_SIZE_MB``, read when ``EmbeddedWorkerHandler`` builds its cache.
    """
    target = "apache_beam.runners.portability.fn_api_runner.worker_handlers.STATE_CACHE_SIZE_MB"
    module = "apache_beam.runners.portability.fn_api_runner.worker_handlers"
    size, handler = _import(target, module, "STATE_CACHE_SIZE_MB", "EmbeddedWorkerHandler")
    if not isinstance(size, int):
        raise _fail(target, f"it is a {type(size).__name__}, not an int")
    if not _calls(handler.__init__, "STATE_CACHE_SIZE_MB", "StateCache"):
        raise _fail(target, "EmbeddedWorkerHandler no longer sizes its StateCache with it")
    if size == 0:
        return
    importlib.import_module(module).STATE_CACHE_SIZE_MB = 0
    _applied("no_state_cache", "the in-process worker caches no user state (weighing each cached value dominates a local batch run's CPU)")


def shorter_state_sampling(ms: int = LOCAL_STATE_SAMPLING_MS) -> None:
    """The in-process worker's state sampler samples every ``ms`` milliseconds.

    Target: the default of ``StateSampler.__init__``'s last parameter ``sampling_period_ms`` (the bundle
    processor builds its sampler without passing one).
    """
    target = "apache_beam.runners.worker.statesampler.StateSampler.__init__"
    sampler, default = _import(
        target, "apache_beam.runners.worker.statesampler", "StateSampler", "DEFAULT_SAMPLING_PERIOD_MS"
    )
    init = sampler.__dict__.get("__init__")
    if not inspect.isfunction(init):
        raise _fail(target, "StateSampler defines no __init__ of its own")
    params = inspect.signature(init).parameters
    last = list(params.values())[-1] if params else None
    if last is None or last.name != "sampling_period_ms" or not init.__defaults__:
        raise _fail(target, f"its last parameter is not sampling_period_ms with a default ({list(params)})")
    beams_default = getattr(init, _WRAPS, init.__defaults__[-1])  # the default before a patch of ours
    if beams_default != default:
        raise _fail(target, f"its sampling_period_ms default is {beams_default}, not {default}")
    (processor,) = _import(target, "apache_beam.runners.worker.bundle_processor", "BundleProcessor")
    if not _calls(processor.__init__, "StateSampler"):
        raise _fail(target, "BundleProcessor no longer builds a StateSampler")
    if init.__defaults__[-1] == ms:
        return
    setattr(init, _WRAPS, beams_default)
    init.__defaults__ = (*init.__defaults__[:-1], ms)
    _applied("shorter_state_sampling", f"the state sampler waits at most {ms} ms, not {default}, at each bundle's end")


@contextlib.contextmanager
def relaxed_gc(threshold: tuple[int, int, int] = LOCAL_GC_THRESHOLD) -> Iterator[None]:
    """Rarer collections, and the objects that exist before the block left out of them, until it ends."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*threshold)
    _applied("relaxed_gc", f"cyclic GC thresholds {threshold}, objects from before the run left out, for this run")
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


# --------------------------------------------------------------------------- which runner gets what


def _runner_kind(runner: Any) -> str | None:
    if runner is None:
        return None
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if isinstance(runner, BundleBasedDirectRunner):
        return "bundle_based"
    if isinstance(runner, FnApiRunner):
        return "fn_api"
    return None


PATCHES: dict[str, tuple[Callable[[], None], ...]] = {
    "bundle_based": (larger_pubsub_pulls, forget_consumed_empty_bundles),
    "fn_api": (no_state_cache, shorter_state_sampling),
}


@contextlib.contextmanager
def apply_for(runner: Any) -> Iterator[None]:
    """Applies the patches ``runner`` needs; run the job inside the block (see the module's docstring).

    Warns when the installed Beam is not the minor version they were written for, and raises
    BeamPatchError, before the job starts, when one of them no longer fits this Beam.
    """
    kind = _runner_kind(runner)
    patches = PATCHES.get(kind or "", ())
    if patches:
        check_version()
    for patch in patches:
        patch()
    if kind == "fn_api":  # the in-process batch runner runs the whole job inside run()
        with relaxed_gc():
            yield
        return
    yield
