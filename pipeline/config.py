"""The job's config file (YAML or JSON): settings, mappings, snapshot and pipeline tuning, validated.

pydantic does the validation (typed models, one error per problem, a JSON schema for
editors); this module only shapes its errors into ``path.to.field: problem`` lines.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from closecrm.events.mapping import (
    ACTION_FIELDS,
    CUSTOM_FIELD_FIELDS,
    CUSTOM_FIELD_PREFIX,
    DEFAULT_MAPPING,
    PRESETS,
    MappingError,
    MappingSpec,
    is_path,
    parse_source,
)
from closecrm.events.parse import DEFAULT_MAX_BYTES
from closecrm.events.trigger import TriggerError, compile_trigger
from closecrm.model import FLAG_NAMES, Flags, Settings
from closecrm.wiring import DEFAULT_API_KEY_ENV
from pipeline.config_guard import Limits, TooBig, check_depth, check_yaml

MAX_MAPPINGS = 50
# Writer keys on a distributed runner when pipeline.writer_shards is absent (see JobOptions.shards).
DISTRIBUTED_WRITER_SHARDS = 16
# Most worker processes chosen for the local runner's per-person fold when pipeline.fold_processes is
# absent (see JobOptions.folders).
LOCAL_FOLD_PROCESSES_MAX = 4
# Bounds on what a config file may hold. Real configs are a few KiB and a few levels deep; the caps
# stop a hostile or mistaken file (an alias bomb, a deep nest, a wrong path) before anything walks it.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_VALUES = 100_000  # values after expanding every YAML alias into a copy of what it names
MAX_CONFIG_TEXT = 4 * 1024 * 1024  # characters of scalar text after expanding aliases
MAX_CONFIG_DEPTH = 64
_LIMITS = Limits(values=MAX_CONFIG_VALUES, text=MAX_CONFIG_TEXT, depth=MAX_CONFIG_DEPTH)


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds one ``path: problem`` line each."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"invalid config {source}" if source else "invalid config"
        super().__init__(f"{where}:\n" + "\n".join(f"  {line}" for line in self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlagsConfig(_Strict):
    """The allow_* switches: the five of an upsert default to true, allow_merging to false."""

    allow_creating_new_leads: StrictBool = True
    allow_updating_existing_leads: StrictBool = True
    allow_creating_new_contacts: StrictBool = True
    allow_creating_duplicate_contacts: StrictBool = Field(
        default=True,
        description="Create the contact under a new lead even when it exists under another lead.",
    )
    allow_updating_existing_contacts: StrictBool = True
    allow_merging: StrictBool = Field(
        default=False,
        description="Let an alias merge two people's contacts and leads (deletes the merged-away records).",
    )

    def flags(self) -> Flags:
        return Flags(**{name: getattr(self, name) for name in FLAG_NAMES})


def _custom_field_id(value: str, kind: str) -> str:
    value = value.strip()
    if value and not value.startswith(CUSTOM_FIELD_PREFIX):
        raise ValueError(f"expected a {kind} custom field id starting with 'cf_' (or empty), got {value!r}")
    return value


class SettingsConfig(_Strict):
    """Destination settings. The API key is never in this file: it comes from an env var or a file."""

    lead_custom_field_id_for_company_id: str = Field(
        default="", description="Text lead custom field (cf_...) holding the company id; the lead lookup key."
    )
    contact_custom_field_id_for_user_id: str = Field(
        default="",
        description="Text contact custom field (cf_...) holding the user id; the contact lookup key.",
    )
    default_lead_status_id: str = Field(
        default="", description="Status (stat_...) for leads the job creates."
    )
    api_key_file: str | None = Field(default=None, description="File holding the Close API key.")
    api_key_env: str = Field(
        default=DEFAULT_API_KEY_ENV, min_length=1, description="Env var holding the Close API key."
    )
    api_key: SkipJsonSchema[Any] = Field(default=None, exclude=True)

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_literal_key(cls, value: Any) -> Any:
        raise ValueError(
            "do not put the API key in the config file; set $CLOSE_API_KEY (or api_key_env) "
            "or point api_key_file at a file holding it"
        )

    @field_validator("lead_custom_field_id_for_company_id")
    @classmethod
    def _lead_cf(cls, value: str) -> str:
        return _custom_field_id(value, "lead")

    @field_validator("contact_custom_field_id_for_user_id")
    @classmethod
    def _contact_cf(cls, value: str) -> str:
        return _custom_field_id(value, "contact")

    @field_validator("default_lead_status_id")
    @classmethod
    def _status(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith("stat_"):
            raise ValueError(f"expected a lead status id starting with 'stat_' (or empty), got {value!r}")
        return value


FieldSource = Annotated[
    Any,
    Field(
        description='A path into the event ("$.traits.email"), a literal, or null to leave the field unmapped; '
        "for lead_custom_fields/contact_custom_fields an object {cf_...: path or literal}."
    ),
]


# The top-level keys of a Segment event. A literal that starts with one and a dot (`traits.email`),
# or is one of the id fields, was meant as a path; no real value of an action field looks like that.
_EVENT_KEYS = ("traits", "properties", "context", "integrations", "userId", "anonymousId", "groupId", "event")
_PATH_LIKE = re.compile(r"^(?:" + "|".join(_EVENT_KEYS) + r")(?:\.[A-Za-z0-9_$]+)+$")
_ID_FIELDS = ("userId", "anonymousId", "groupId", "previousId", "messageId")


def looks_like_a_path(value: Any) -> bool:
    return isinstance(value, str) and (bool(_PATH_LIKE.match(value.strip())) or value.strip() in _ID_FIELDS)


def _check_source(name: str, value: Any) -> None:
    if value is None:
        return
    if name in CUSTOM_FIELD_FIELDS:
        if is_path(value):
            parse_source(value)
            return
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected an object {{cf_...: path or literal}} or a $. path to one")
        for key, item in value.items():
            if not isinstance(key, str) or not key.startswith(CUSTOM_FIELD_PREFIX):
                raise ValueError(f"{name}.{key}: custom field keys must start with 'cf_'")
            if is_path(item):
                parse_source(item)
        return
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{name}: expected a $. path or a text/number literal, got {type(value).__name__}")
    if is_path(value):
        parse_source(value)


class MappingConfig(FlagsConfig):
    """One mapping: when it applies (trigger), where each action field comes from, and the flags."""

    name: str = Field(min_length=1)
    preset: Literal["identify", "group", "alias"] | None = Field(
        default=None, description="Start from a shipped mapping; trigger and fields given here override it."
    )
    trigger: str | None = Field(
        default=None,
        description='Condition in Segment\'s filter language, e.g. type = "track" and event = "User Created".',
    )
    enabled: StrictBool = True
    fields: dict[str, FieldSource] = Field(
        default_factory=dict,
        description="Action field -> source; a field left out uses its default source.",
    )

    @field_validator("trigger")
    @classmethod
    def _trigger_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_trigger(value)
            except TriggerError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("fields")
    @classmethod
    def _fields_known(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for name, source in value.items():
            if name not in ACTION_FIELDS:
                problems.append(f"{name}: unknown action field (known: {', '.join(ACTION_FIELDS)})")
                continue
            try:
                _check_source(name, source)
            except (ValueError, MappingError) as exc:
                problems.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _has_trigger(self) -> MappingConfig:
        if self.trigger is None and self.preset is None:
            raise ValueError("trigger: required (or name a preset: identify | group | alias)")
        return self

    def spec(self) -> MappingSpec:
        base = PRESETS[self.preset] if self.preset else None
        trigger = self.trigger if self.trigger is not None else base.trigger  # type: ignore[union-attr]
        fields = {**(base.fields if base else {}), **self.fields}
        return MappingSpec(name=self.name, trigger=trigger, fields=fields, flags=self.flags())


class SnapshotSourceConfig(_Strict):
    """Where snapshot-sync reads when the command line names neither --input nor --from."""

    url: str | None = Field(
        default=None,
        description="duckdb:///FILE, duckdb:// (in memory), postgresql://USER@HOST:PORT/DB or bigquery://PROJECT; "
        "never with a password in it.",
    )
    table: str | None = Field(default=None, min_length=1, description="Table to read (SCHEMA.NAME).")
    query: str | None = Field(default=None, min_length=1, description="SQL whose rows are the snapshot.")
    since_column: str | None = Field(
        default=None,
        min_length=1,
        description="Read only rows whose value here is above the previous run's high-water mark.",
    )
    password_env: str | None = Field(
        default=None, min_length=1, description="Env var holding the password (absent: PGPASSWORD for postgresql)."
    )
    password_file: str | None = Field(
        default=None, min_length=1, description="File holding the password (any Beam filesystem)."
    )
    slices: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="Slices a table is read in (by a hash of the primary key), one reader each; one for bigquery.",
    )
    batch_rows: int = Field(
        default=100_000, ge=100, le=1_000_000, description="Rows per record batch a reader holds at a time."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            from closecrm.reverse_etl.warehouse_url import WarehouseURL, WarehouseURLError

            try:
                WarehouseURL.parse(value, where="url")
            except WarehouseURLError as exc:
                raise ValueError(str(exc).removeprefix("url: ")) from None
        return value

    @model_validator(mode="after")
    def _what(self) -> SnapshotSourceConfig:
        if self.url is None and (self.table or self.query or self.since_column):
            raise ValueError("table, query and since_column need a url")
        if self.url is not None and (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query with url")
        return self


class SnapshotConfig(FlagsConfig):
    """Reverse ETL: action fields come from columns of a warehouse table (snapshot-sync)."""

    primary_key: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    fields: dict[str, str | dict[str, str]] = Field(
        default_factory=dict, description="Action field -> column name; custom fields: {cf_...: column}."
    )
    source: SnapshotSourceConfig = Field(
        default_factory=SnapshotSourceConfig,
        description="The warehouse to read (the command line's --input or --from overrides it).",
    )

    @field_validator("fields")
    @classmethod
    def _columns(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for name, column in value.items():
            if name not in ACTION_FIELDS:
                problems.append(f"{name}: unknown action field (known: {', '.join(ACTION_FIELDS)})")
            elif name in CUSTOM_FIELD_FIELDS:
                if not isinstance(column, dict):
                    problems.append(f"{name}: expected an object {{cf_...: column}}")
                else:
                    problems.extend(
                        f"{name}.{key}: custom field keys must start with 'cf_'"
                        for key in column
                        if not key.startswith(CUSTOM_FIELD_PREFIX)
                    )
            elif not isinstance(column, str) or not column:
                problems.append(f"{name}: expected a column name")
        if problems:
            raise ValueError("; ".join(problems))
        return value


class WindowConfig(_Strict):
    kind: Literal["processing", "fixed", "session", "global"] = Field(
        default="processing",
        description=(
            "How streaming requests are grouped before collapsing (batch runs use global). "
            "processing: panes of `seconds` of processing time in the global window (works on every "
            "runner); fixed/session: event-time windows, which need a runner with real watermarks "
            "(Dataflow, Flink); global: same as processing on unbounded input."
        ),
    )
    seconds: float = Field(default=10.0, gt=0, description="Pane or window size, or the session gap.")


class DedupeConfig(_Strict):
    enabled: StrictBool = True
    seconds: float = Field(default=600.0, gt=0, description="How long a messageId is remembered.")


class PipelineConfig(_Strict):
    max_event_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024, description="Larger events are dead-lettered.")
    batch_size: int = Field(
        default=20_000,
        ge=1,
        le=200_000,
        description=(
            "Requests per writer flush (per shard), applied in event time through the writer's one engine "
            "stream. Unbounded input flushes at this size, in lookups of 200 requests (5,000 of lookahead). "
            "Bounded input is held until it ends, then cut into flushes of about this size, each looked up "
            "at once; a flush runs longer where a cut would split a collapsed request's span, so an input "
            "whose people's events all span the run is one flush (each request let go once it is written)."
        ),
    )
    flush_seconds: float = Field(default=5.0, gt=0, description="Longest a request waits for its batch.")
    writer_shards: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Keys the writer is split into (requests for one lead always share a key). "
            f"Absent: 1 on the local DirectRunner (one worker), {DISTRIBUTED_WRITER_SHARDS} on distributed runners."
        ),
    )
    fold_processes: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description=(
            "Worker processes that parse, map and collapse bounded input's people beside the job's own "
            "process, on the local DirectRunner when it runs the whole job in this process (which is "
            "otherwise one core's work). Absent: one fewer than the machine's cores, at most "
            f"{LOCAL_FOLD_PROCESSES_MAX}. 0: none. Other runners ignore it: they run a worker per core."
        ),
    )
    window: WindowConfig = WindowConfig()
    dedupe: DedupeConfig = DedupeConfig()

    @field_validator("dedupe", mode="before")
    @classmethod
    def _dedupe_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class JobConfig(_Strict):
    """The whole config file."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="close-sync config")

    settings: SettingsConfig = SettingsConfig()
    mappings: list[MappingConfig] | None = Field(
        default=None, max_length=MAX_MAPPINGS, description="Absent = the default identify mapping only."
    )
    snapshot: SnapshotConfig | None = None
    pipeline: PipelineConfig = PipelineConfig()

    @field_validator("mappings")
    @classmethod
    def _unique_names(cls, value: list[MappingConfig] | None) -> list[MappingConfig] | None:
        names = [m.name for m in value or ()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"mapping names must be unique; repeated: {', '.join(dupes)}")
        return value

    def settings_model(self) -> Settings:
        s = self.settings
        return Settings(
            lead_custom_field_id_for_company_id=s.lead_custom_field_id_for_company_id,
            contact_custom_field_id_for_user_id=s.contact_custom_field_id_for_user_id,
            default_lead_status_id=s.default_lead_status_id,
        )

    def mapping_specs(self) -> list[MappingSpec]:
        if self.mappings is None:
            return [DEFAULT_MAPPING]
        return [m.spec() for m in self.mappings if m.enabled]

    def _enabled_sources(self) -> list[tuple[str, str, Any]]:
        """(config path, action field, source) of each field the enabled mappings set in the file."""
        return [
            (f"mappings[{i}].fields.{name}", name, source)
            for i, mapping in enumerate(self.mappings or ())
            if mapping.enabled
            for name, source in mapping.fields.items()
        ]

    def warnings(self) -> list[str]:
        """``path: problem`` for what is valid but almost surely not meant: a literal that reads like a
        path into the event (``traits.email`` without ``$.``), which every request would carry as is."""
        found = []
        for where, name, source in self._enabled_sources():
            items = source.items() if name in CUSTOM_FIELD_FIELDS and isinstance(source, dict) else [(None, source)]
            for key, value in items:
                if looks_like_a_path(value):
                    found.append(
                        f"{where}{'.' + key if key else ''}: {value!r} is a literal, sent as is with every "
                        f"request; write $.{value} to read it from the event"
                    )
        return found

    def close_references(self) -> list[tuple[str, str, str]]:
        """(config path, what, id) of each Close object the enabled mappings name, to check against
        Close: ``what`` is "lead custom field", "contact custom field" or "lead status"."""
        found = []
        for where, name, source in self._enabled_sources():
            if name in CUSTOM_FIELD_FIELDS and isinstance(source, dict):
                what = "lead custom field" if name == "lead_custom_fields" else "contact custom field"
                found.extend((f"{where}.{key}", what, key) for key in source)
            elif name == "lead_status_id" and isinstance(source, str) and not is_path(source):
                found.append((where, "lead status", source.strip()))
        return found

    def options(self) -> JobOptions:
        """The file's choices as one frozen object, the only one a job passes down."""
        tuning = self.pipeline
        return JobOptions(
            settings=self.settings_model(),
            mappings=tuple(self.mapping_specs()),
            max_event_bytes=tuning.max_event_bytes,
            batch_size=tuning.batch_size,
            flush_seconds=tuning.flush_seconds,
            writer_shards=tuning.writer_shards,
            fold_processes=tuning.fold_processes,
            dedupe_seconds=tuning.dedupe.seconds if tuning.dedupe.enabled else None,
            window_kind=tuning.window.kind,
            window_seconds=tuning.window.seconds,
            snapshot_slices=self._snapshot_source().slices,
            snapshot_batch_rows=self._snapshot_source().batch_rows,
        )

    def _snapshot_source(self) -> SnapshotSourceConfig:
        return self.snapshot.source if self.snapshot is not None else SnapshotSourceConfig()


@dataclass(frozen=True)
class JobOptions:
    """What the config decides for a job, resolved once from the validated file.

    The defaults live only in the pydantic models above: everything below (graphs, transforms, the
    writer) takes these values as required arguments, so a default cannot drift between layers.
    """

    settings: Settings
    mappings: tuple[MappingSpec, ...]
    max_event_bytes: int  # larger events are dead-lettered
    batch_size: int  # most requests per writer flush
    flush_seconds: float  # longest a request waits for its flush (unbounded input)
    writer_shards: int | None  # None: chosen per runner, see shards()
    fold_processes: int | None  # None: chosen per runner, see folders()
    dedupe_seconds: float | None  # how long a messageId is remembered; None: no dedupe
    window_kind: str
    window_seconds: float
    snapshot_slices: int  # slices a warehouse table is read in (snapshot-sync --from)
    snapshot_batch_rows: int  # rows per record batch a warehouse reader holds

    def shards(self, local: bool) -> int:
        """Writer keys: ``writer_shards`` when the file sets it, else 1 on the local runner, else
        `DISTRIBUTED_WRITER_SHARDS`. The local runner has one worker that flushes shard after shard:
        more shards only cut its lookahead (each flush starts lead-bound). Elsewhere shards are what
        workers share out."""
        if self.writer_shards is not None:
            return self.writer_shards
        return 1 if local else DISTRIBUTED_WRITER_SHARDS

    def folders(self, in_process: bool) -> int:
        """Worker processes beside the job's own for the bounded per-person fold: ``fold_processes``
        when the file sets it, else on a runner that runs the whole job in this process (``in_process``:
        the local DirectRunner, not in its multi-processing mode) one fewer than the machine's cores,
        at most `LOCAL_FOLD_PROCESSES_MAX`, else 0 (the workers of other runners fill their cores)."""
        if self.fold_processes is not None:
            return self.fold_processes if in_process else 0
        if not in_process:
            return 0
        return max(0, min(LOCAL_FOLD_PROCESSES_MAX, (os.cpu_count() or 1) - 1))


def default_config() -> JobConfig:
    return JobConfig()


def json_schema() -> dict[str, Any]:
    return JobConfig.model_json_schema()


def parse_config(data: Any, source: str | None = None) -> JobConfig:
    """Validate already-loaded YAML/JSON data."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {type(data).__name__}"], source)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None


def load_config(path: str | None) -> JobConfig:
    """Read and validate the config file; ``None`` gives `default_config()`."""
    if path is None:
        return default_config()
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"(file): cannot read: {exc.strerror or exc}"], path) from None
    if len(raw) > MAX_CONFIG_BYTES:
        mib = MAX_CONFIG_BYTES // (1024 * 1024)
        raise ConfigError([f"(file): larger than {mib} MiB; is this the right file?"], path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"(file): not UTF-8 text (byte {exc.start})"], path) from None
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
            check_depth(data, _LIMITS)
        else:
            check_yaml(text, _LIMITS)  # before anything builds or walks the values
            data = yaml.safe_load(text)  # YAML is a superset of JSON
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"(file): invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"], path
        ) from None
    except RecursionError:
        raise ConfigError([f"(file): nested more than {MAX_CONFIG_DEPTH} levels"], path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"(file): invalid YAML{where}: {problem}"], path) from None
    except TooBig as exc:
        raise ConfigError([f"{_location(exc.where)}: {exc.problem}"], path) from None
    return parse_config(data, path)


# ---------------------------------------------------------------------------- error shaping


def _location(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        message = _MESSAGES.get(error["type"], error["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if loc and loc[-1] == "fields":
            # Each field's problem comes as "field: problem"; move the field into the path.
            for part in message.split("; "):
                head, _, rest = part.partition(": ")
                lines.append(f"{_location(loc)}.{head}: {rest}")
        elif loc and isinstance(loc[-1], int) and message.startswith("trigger: "):
            lines.append(f"{_location([*loc, 'trigger'])}: {message[len('trigger: ') :]}")
        else:
            lines.append(f"{_location(loc)}: {message}")
    return lines
