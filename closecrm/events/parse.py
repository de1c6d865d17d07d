"""Parse Segment-spec events (JSON text, bytes, or Avro/Parquet rows) into a validated `Event`."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

EVENT_TYPES = frozenset({"identify", "group", "track", "page", "screen", "alias"})

# Top-level keys that hold objects; Avro/Parquet exports often carry them as JSON strings.
OBJECT_KEYS = ("traits", "context", "properties", "integrations")

# Where the event time may be, best first (Segment's own precedence).
TIMESTAMP_KEYS = ("timestamp", "receivedAt", "sentAt", "originalTimestamp")

DEFAULT_MAX_BYTES = 64 * 1024

# Containers an event may nest, the event object itself being level 1. Real events nest a handful of
# levels; far deeper ones only exhaust the recursion of whatever walks them later (pickling, copying).
MAX_DEPTH = 64

# Longest path a reason names (keys come from the event, so they are clipped).
_MAX_PATH_CHARS = 120

MISSING: Any = object()  # a path that resolves to nothing (distinct from JSON null)


class BadEvent(Exception):
    """An event that cannot be turned into requests; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Event:
    """A parsed event. ``raw`` is the normalised JSON object (nested objects decoded,
    ``type``/``messageId``/``timestamp`` filled in), so ``parse_event(e.raw) == e``.

    ``received`` (the payload as it was given to `parse_event`) and ``origin`` (where it was read, a
    `model.Origin`) are kept for the event's dead letter, which shows the event as the producer sent
    it, not as the job filled it in; they take no part in comparisons.
    """

    type: str
    message_id: str
    user_id: str | None
    anonymous_id: str | None
    group_id: str | None
    name: str | None
    event: str | None
    timestamp: str
    raw: dict[str, Any]
    received: Any = field(default=None, compare=False, repr=False)
    origin: Any = field(default=None, compare=False, repr=False)

    @property
    def person_key(self) -> str:
        return self.user_id if self.user_id is not None else f"anon:{self.anonymous_id}"


def parse_event(
    raw: bytes | str | dict[str, Any],
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    now: datetime | None = None,
    origin: Any = None,
) -> Event:
    """Validate one event; raise `BadEvent` with the reason it cannot be used.

    ``now`` is the parse time used when the event carries no timestamp at all; ``origin`` is where
    ``raw`` was read, which the event keeps with ``raw`` itself (`Event.received`).
    """
    if isinstance(raw, dict):
        return _parse(raw, max_bytes, now, plain=False, origin=origin)
    try:
        # JSON text holds plain JSON values only, so the walk that converts Avro/Parquet values is
        # skipped; a float that overflows to infinity (1e999) is the one thing it would reject, and
        # such an event is parsed again the thorough way to get the very same error.
        return _parse(raw, max_bytes, now, plain=True, origin=origin)
    except _NonFinite:
        return _parse(raw, max_bytes, now, plain=False, origin=origin)


def identity(
    raw: bytes | str | dict[str, Any], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[str | None, str | None, str] | None:
    """(userId, anonymousId, messageId) of the event `parse_event` makes of ``raw``, or None when it
    makes none.

    For JSON text that names its messageId and a user or visitor, only the text is decoded and those
    three fields read, a fraction of a parse; anything else (a row, a generated messageId, text the
    quick read refuses) is parsed in full. Where both run, they agree (a property test holds them to it).
    """
    # A str that is not UTF-8 (a lone surrogate) never parses: the full parse names why.
    if isinstance(raw, bytes) or (isinstance(raw, str) and _encodable(raw)):
        try:
            obj, _, _ = _load(raw, max_bytes, float_hook=_finite_float)
            message_id = _str_value(obj, "messageId")
            user_id, anonymous_id = _id_value(obj, "userId"), _id_value(obj, "anonymousId")
            # an escaped lone surrogate makes an id no event has (nor any coder takes)
            if message_id is not None and (user_id or anonymous_id):
                if _encodable(f"{message_id}{user_id or ''}{anonymous_id or ''}"):
                    return user_id, anonymous_id, message_id
        except Exception:  # noqa: BLE001 - the full parse decides (and names what is wrong)
            pass
    try:
        event = parse_event(raw, max_bytes)
    except Exception:  # noqa: BLE001 - not an event: its parse dead-letters it later
        return None
    return event.user_id, event.anonymous_id, event.message_id


class _NonFinite(Exception):
    """A JSON number that overflowed to infinity (not a ValueError: json.loads must not swallow it)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


# canonical_json(data) of an event parsed from N bytes of JSON text is at most about 5 N + 100 bytes
# (a number can grow from "1e15" to "1000000000000000.0", a timestamp from 0 to 27 characters, and a
# generated messageId adds 50); text this much smaller than the limit needs no re-encoding to check it.
_SIZE_GROWTH = 8
_SIZE_SLACK = 512


def _parse(raw: Any, max_bytes: int, now: datetime | None, *, plain: bool, origin: Any) -> Event:
    obj, size, simple = _load(raw, max_bytes, float_hook=_finite_float if plain else None)
    data = {k: v for k, v in obj.items() if v is not None}
    for key in OBJECT_KEYS:
        if key in data:
            data[key] = _decode_object(data[key], key, float_hook=_finite_float if plain else None)
    if not (plain and simple):
        check_value(data)
    context = data.get("context")
    if context is not None and context.get("traits") is not None:
        if not isinstance(context["traits"], dict):
            raise BadEvent("wrong_type:context.traits")
    if not plain:
        data = _jsonable(data, "event")

    etype = data.get("type")
    if etype is None or etype == "":
        raise BadEvent("missing_type")
    if not isinstance(etype, str):
        raise BadEvent("wrong_type:type")
    etype = etype.strip().lower()
    if etype not in EVENT_TYPES:
        raise BadEvent("unknown_type", data["type"])
    data["type"] = etype

    user_id = _id_value(data, "userId")
    anonymous_id = _id_value(data, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise BadEvent("missing_id", "neither userId nor anonymousId")
    group_id = _id_value(data, "groupId")
    if etype == "group" and group_id is None:
        raise BadEvent("missing_group_id")
    # An alias says previousId and userId are one person; without the previous id it says nothing.
    if etype == "alias" and _id_value(data, "previousId") is None:
        raise BadEvent("missing_previous_id")
    event_name = _str_value(data, "event")
    if etype == "track" and event_name is None:
        raise BadEvent("missing_event")
    name = _str_value(data, "name")

    timestamp = _event_time(data)
    if timestamp is not None:
        data["timestamp"] = timestamp
    message_id = _str_value(data, "messageId")
    if message_id is None:
        # Hashed before a parse-time timestamp is filled in, so a redelivery gets the same id.
        data.pop("messageId", None)
        message_id = "gen-" + hashlib.sha256(canonical_json(data).encode()).hexdigest()[:32]
        data["messageId"] = message_id
    if timestamp is None:
        data["timestamp"] = format_timestamp(now or datetime.now(UTC))

    bounded = plain and size is not None and size * _SIZE_GROWTH + _SIZE_SLACK <= max_bytes
    if not bounded and len(canonical_json(data).encode()) > max_bytes:
        raise BadEvent("too_large", f"more than {max_bytes} bytes")
    return Event(
        type=etype,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        group_id=group_id,
        name=name,
        event=event_name,
        timestamp=data["timestamp"],
        raw=data,
        received=raw,
        origin=origin,
    )


def opted_out(event: Event) -> bool:
    """Segment's per-event switch: ``integrations.Close`` false, or ``All`` false without Close on.

    An options object for Close (``{"Close": {...}}``) counts as on, as in Segment.
    """
    integrations = event.raw.get("integrations") or {}
    close = integrations.get("Close", MISSING)
    if close is False:
        return True
    if integrations.get("All") is False:
        return not (close is True or isinstance(close, dict))
    return False


def resolve_path(data: dict[str, Any], path: Sequence[str]) -> Any:
    """Value at a dotted path of an event, or `MISSING`.

    Segment puts a user's traits in ``context.traits`` on track/page/screen calls, so a
    ``traits.*`` path that finds nothing (or null/"") falls back to ``context.traits.*`` —
    except on ``group`` events, whose ``traits`` describe the company, not the user.
    """
    value = _walk(data, path)
    if (
        (value is MISSING or value is None or value == "")
        and len(path) > 1
        and path[0] == "traits"
        and data.get("type") != "group"
    ):
        fallback = _walk(data, ("context", *path))
        if fallback is not MISSING:
            return fallback
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_timestamp(moment: datetime) -> str:
    """Fixed-width UTC form (4-digit year, 6-digit fraction), so timestamps sort as strings.

    Raises OverflowError when the moment falls outside years 1-9999 in UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat pads the year to four digits (strftime's %Y does not on every platform).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_SHORT_YEAR = re.compile(r"\d{1,3}-")


def instant(value: Any) -> datetime | None:
    """The aware UTC moment of a timestamp string, or None when it is not one.

    Timestamps compare as moments, not as text: offsets, fraction lengths and short years all
    order wrongly as strings.
    """
    if not isinstance(value, str):
        return None
    canonical = _canonical_moment(value)
    if canonical is not None:
        return canonical
    moment = _parse_time(value)
    if moment is None and _SHORT_YEAR.match(value.strip()):
        year, _, rest = value.strip().partition("-")
        moment = _parse_time(f"{int(year):04d}-{rest}")
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# A path as a linked list (key, parent): pushing a child costs the same at any depth.
_Path = tuple[Any, Any] | None


def check_value(value: Any, where: str = "", max_depth: int = MAX_DEPTH) -> None:
    """Raise `BadEvent` when ``value`` nests deeper than ``max_depth`` containers (``too_deep``) or a
    key or string in it holds a lone surrogate (``invalid_unicode:<path>``): such text cannot be
    encoded as UTF-8, so it could be neither hashed, written, nor sent to Close.

    Iterative, so the check itself cannot exhaust the recursion limit it protects.
    """
    stack: list[tuple[Any, int, _Path]] = [(value, 1, (where, None) if where else None)]
    if isinstance(value, str):
        if not _encodable(value):
            raise BadEvent(f"invalid_unicode:{_render(stack[0][2])}")
        return
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list | tuple):
            items = enumerate(node)
        else:
            continue
        if depth > max_depth:
            raise BadEvent("too_deep", f"more than {max_depth} levels")
        for key, item in items:
            if isinstance(key, str) and not _encodable(key):
                raise BadEvent(f"invalid_unicode:{_render((key, path))}")
            if isinstance(item, str):
                if not _encodable(item):
                    raise BadEvent(f"invalid_unicode:{_render((key, path))}")
            elif isinstance(item, dict | list | tuple):
                stack.append((item, depth + 1, (key, path)))


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _render(path: _Path) -> str:
    parts: list[Any] = []
    while path is not None:
        key, path = path
        parts.append(key)
    text = ""
    for key in reversed(parts):
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else str(key)
    # The reason must itself be writable: a bad key is shown by its escape.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:_MAX_PATH_CHARS]


def _walk(data: Any, path: Sequence[str]) -> Any:
    current = data
    for part in path:
        if isinstance(current, dict):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            if index >= len(current):
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


# json.loads with hooks builds a new decoder on every call; these are the two this module uses, built once.
_DECODERS = {
    None: json.JSONDecoder(parse_constant=_reject_constant),
    _finite_float: json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float),
}


def _json_loads(text: str | bytes, float_hook: Callable[[str], float] | None) -> Any:
    """``json.loads(text, parse_constant=_reject_constant, parse_float=float_hook)``, without a new decoder."""
    decoder = _DECODERS.get(float_hook)
    if decoder is not None and isinstance(text, str) and not text.startswith("\ufeff"):
        return decoder.decode(text)
    # bytes (json.loads detects their encoding), a BOM (json.loads names it), another hook
    return json.loads(text, parse_constant=_reject_constant, parse_float=float_hook)


def _load(
    raw: bytes | str | dict[str, Any], max_bytes: int, float_hook: Callable[[str], float] | None = None
) -> tuple[dict[str, Any], int | None, bool]:
    """The event object; the size of its text in bytes (0 for a row that was never text, None when
    the text has \\u escapes); and whether the text is simple: too few brackets to nest deeper than
    `MAX_DEPTH`, and no \\u escape or surrogate that could leave a lone surrogate in a string. Only
    an event that is not simple needs the walk of `check_value`."""
    if isinstance(raw, dict):
        return raw, 0, False
    if isinstance(raw, bytes | bytearray | memoryview):
        raw = bytes(raw)
        size = len(raw)
        if size > max_bytes:
            raise BadEvent("too_large", f"{len(raw)} bytes > {max_bytes}")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadEvent("unparseable_json", f"not UTF-8: {exc}") from None
    elif isinstance(raw, str):
        text = raw
        if len(text) > max_bytes:
            raise BadEvent("too_large", f"> {max_bytes} bytes")
        # surrogatepass: a str may hold lone surrogates; they are reported by the walk, not here.
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise BadEvent("too_large", f"> {max_bytes} bytes")
    else:
        raise BadEvent("not_an_object", type(raw).__name__)
    try:
        obj = _json_loads(text, float_hook)
    except RecursionError:
        raise BadEvent("too_deep", f"more than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise BadEvent("unparseable_json", str(exc)[:200]) from None
    if not isinstance(obj, dict):
        raise BadEvent("not_an_object", type(obj).__name__)
    escaped = "\\u" in text
    # Text decoded from UTF-8 bytes cannot hold a surrogate; a str can.
    simple = (
        not escaped
        and text.count("[") + text.count("{") <= MAX_DEPTH
        and (isinstance(raw, bytes) or _encodable(text))
    )
    return obj, (None if escaped else size), simple


def _decode_object(value: Any, key: str, float_hook: Callable[[str], float] | None = None) -> dict[str, Any]:
    if isinstance(value, str | bytes):
        if not value.strip():
            return {}
        try:
            value = _json_loads(value, float_hook)
        except RecursionError:
            raise BadEvent("too_deep", f"{key}: more than {MAX_DEPTH} levels") from None
        except ValueError:
            raise BadEvent(f"wrong_type:{key}", "a string that is not a JSON object") from None
        if value is None:
            return {}
    if not isinstance(value, dict):
        raise BadEvent(f"wrong_type:{key}", type(value).__name__)
    return value


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values only: rows from Avro/Parquet may hold datetimes, Decimals, bytes, tuples."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadEvent(f"wrong_type:{where}", "NaN or infinity")
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where if where != "event" else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, datetime):
        try:
            return format_timestamp(value)
        except (OverflowError, ValueError):
            raise BadEvent("invalid_timestamp", f"{where}: outside years 1-9999 in UTC") from None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise BadEvent(f"wrong_type:{where}", "NaN or infinity")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    raise BadEvent(f"wrong_type:{where}", type(value).__name__)


def _id_value(data: dict[str, Any], key: str) -> str | None:
    """Ids may arrive as numbers; empty ones count as absent."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadEvent(f"wrong_type:{key}", type(value).__name__)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        data.pop(key, None)
        return None
    data[key] = text
    return text


def _str_value(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadEvent(f"wrong_type:{key}", type(value).__name__)
    return value


# The form `format_timestamp` writes, which most producers send too: a valid date and time in it is its
# own normal form (ASCII digits only: fromisoformat reads other digits too).
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def _canonical_moment(value: Any) -> datetime | None:
    """The UTC moment of a timestamp already in `format_timestamp`'s form, else None."""
    if type(value) is str and _CANONICAL.fullmatch(value):
        try:
            return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
        except ValueError:  # not a real date or time: the full parse says so
            return None
    return None


def _event_time(data: dict[str, Any]) -> str | None:
    for key in TIMESTAMP_KEYS:
        value = data.get(key)
        if value is None or value == "":
            continue
        if _canonical_moment(value) is not None:
            return value
        moment = _parse_time(value)
        if moment is None:
            raise BadEvent("invalid_timestamp", f"{key}={value!r}")
        try:
            return format_timestamp(moment)
        except (OverflowError, ValueError):
            raise BadEvent("invalid_timestamp", f"{key}={value!r} is outside years 1-9999 in UTC") from None
    return None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        # Epoch seconds, or milliseconds when it is too large to be seconds.
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
