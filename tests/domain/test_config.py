"""pipeline.config: the config file validates with path-qualified errors; the JSON schema is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from closecrm.events.mapping import DEFAULT_MAPPING, GROUP_PRESET, compile_mappings
from closecrm.model import Flags, Settings
from pipeline.cli_common import key_source
from pipeline.config import (
    ConfigError,
    JobConfig,
    default_config,
    json_schema,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: object, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_no_config_means_the_default_mapping_only() -> None:
    config = load_config(None)
    assert config == default_config()
    assert config.mapping_specs() == [DEFAULT_MAPPING]
    assert config.settings_model() == Settings()
    assert (config.pipeline.max_event_bytes, config.pipeline.batch_size, config.pipeline.flush_seconds) == (
        65536,
        20_000,
        5.0,
    )
    assert config.snapshot is None


def test_example_config_loads_and_its_mappings_compile() -> None:
    config = load_config(str(ROOT / "examples" / "config.example.yaml"))
    specs = config.mapping_specs()
    assert [s.name for s in specs] == ["Identify to Close", "Group to Close", "Pro sign-ups"]
    assert specs[1].trigger == GROUP_PRESET.trigger and specs[1].fields == GROUP_PRESET.fields
    assert specs[2].flags == Flags(allow_creating_duplicate_contacts=False)
    assert config.settings_model().lead_custom_field_id_for_company_id.startswith("cf_")
    assert config.snapshot is not None and config.snapshot.primary_key == ["user_id"]
    compile_mappings(specs)


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_yaml_and_json_give_the_same_config(tmp_path: Path, suffix: str) -> None:
    data = {
        "settings": {"contact_custom_field_id_for_user_id": "cf_u"},
        "mappings": [{"name": "a", "trigger": 'type = "identify"', "fields": {"lead_status_id": "stat_1"}}],
    }
    config = load_config(write(tmp_path, data, f"c.{suffix}"))
    assert config.settings_model() == Settings(contact_custom_field_id_for_user_id="cf_u")
    assert config.mapping_specs()[0].fields == {"lead_status_id": "stat_1"}


def test_preset_fields_can_be_overridden_and_disabled_mappings_are_dropped() -> None:
    config = parse_config(
        {
            "mappings": [
                {"name": "g", "preset": "group", "fields": {"contact_email": "$.traits.billing_email"}},
                {"name": "off", "trigger": "true", "enabled": False},
            ]
        }
    )
    (spec,) = config.mapping_specs()
    assert spec.trigger == 'type = "group"'
    assert spec.fields["contact_email"] == "$.traits.billing_email"
    assert spec.fields["lead_company_id"] == "$.groupId"


def test_empty_mappings_list_means_no_mappings() -> None:
    assert parse_config({"mappings": []}).mapping_specs() == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {
                "mappings": [
                    {"name": "a", "trigger": 'type = "identify"'},
                    {"name": "b", "trigger": "type = "},
                ]
            },
            "mappings[1].trigger: expected a value after '=' at column 8",
        ),
        ({"mappings": [{"name": "a"}]}, "mappings[0].trigger: required (or name a preset: identify | group | alias)"),
        ({"mappings": [{"trigger": "true"}]}, "mappings[0].name: required"),
        (
            {"mappings": [{"name": "a", "trigger": "true", "fields": {"contact_emial": "$.traits.email"}}]},
            "mappings[0].fields.contact_emial: unknown action field",
        ),
        (
            {
                "mappings": [
                    {"name": "a", "trigger": "true", "fields": {"lead_custom_fields": {"plan": "$.traits.p"}}}
                ]
            },
            "mappings[0].fields.lead_custom_fields.plan: custom field keys must start with 'cf_'",
        ),
        (
            {"mappings": [{"name": "a", "trigger": "true", "fields": {"contact_name": {"a": 1}}}]},
            "mappings[0].fields.contact_name: expected a $. path or a text/number literal, got dict",
        ),
        (
            {"mappings": [{"name": "a", "trigger": "true", "fields": {"contact_name": True}}]},
            "mappings[0].fields.contact_name: expected a $. path or a text/number literal, got bool",
        ),
        (
            {"mappings": [{"name": "a", "trigger": "true", "fields": {"contact_name": "$.traits..x"}}]},
            "mappings[0].fields.contact_name: malformed path",
        ),
        (
            {"mappings": [{"name": "a", "trigger": "true", "allow_creating_new_leads": "yes"}]},
            "mappings[0].allow_creating_new_leads: Input should be a valid boolean",
        ),
        (
            {"mappings": [{"name": "a", "trigger": "true", "allow_everything": True}]},
            "mappings[0].allow_everything: unknown key",
        ),
        ({"mappings": [{"name": "a", "trigger": "true"}] * 2}, "mappings: mapping names must be unique"),
        (
            {"mappings": [{"name": f"m{i}", "trigger": "true"} for i in range(51)]},
            "mappings: List should have at most 50 items",
        ),
        (
            {"settings": {"lead_custom_field_id_for_company_id": "company"}},
            "settings.lead_custom_field_id_for_company_id: expected a lead custom field id starting with 'cf_'",
        ),
        (
            {"settings": {"default_lead_status_id": "open"}},
            "settings.default_lead_status_id: expected a lead status",
        ),
        ({"settings": {"api_key": "api_123"}}, "settings.api_key: do not put the API key in the config file"),
        ({"settings": {"colour": 1}}, "settings.colour: unknown key"),
        ({"snapshot": {"primary_key": []}}, "snapshot.primary_key: List should have at least 1 item"),
        ({"snapshot": {"fields": {}}}, "snapshot.primary_key: required"),
        (
            {"snapshot": {"primary_key": ["id"], "fields": {"contact_mail": "email"}}},
            "snapshot.fields.contact_mail: unknown action field",
        ),
        (
            {"snapshot": {"primary_key": ["id"], "fields": {"lead_custom_fields": {"plan": "plan"}}}},
            "snapshot.fields.lead_custom_fields.plan: custom field keys must start with 'cf_'",
        ),
        (
            {"pipeline": {"window": {"kind": "hourly"}}},
            "pipeline.window.kind: Input should be 'processing', 'fixed', 'session' or",
        ),
        ({"pipeline": {"batch_size": 0}}, "pipeline.batch_size: Input should be greater than or equal to 1"),
        ({"extra": 1}, "extra: unknown key"),
        ([1, 2], "(top level): expected a mapping of sections"),
    ],
)
def test_errors_name_the_path_and_the_problem(data: object, expected: str) -> None:
    found = problems(data)
    assert any(line.startswith(expected) for line in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"settings": {"api_key": "k"}, "mappings": [{"name": "a", "trigger": "type ="}], "x": 1})
    assert len(found) == 3


def test_the_api_key_value_never_appears_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"settings": {"api_key": "api_SECRET_123"}})
    assert "api_SECRET_123" not in str(caught.value)


def test_dedupe_accepts_a_bare_boolean() -> None:
    assert parse_config({"pipeline": {"dedupe": False}}).pipeline.dedupe.enabled is False


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("mappings: [\n  - name: a\n    trigger: : :\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(str(bad))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_config(str(bad_json))


def _key(config, api_key_file: str | None = None) -> str:
    """The key the job would use for this config (what the CLI builds from --api-key-file and the config)."""
    return key_source(api_key_file, config).read().reveal()


def test_api_key_comes_from_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSE_API_KEY", " api_env \n")
    assert _key(default_config()) == "api_env"
    custom = parse_config({"settings": {"api_key_env": "MY_KEY"}})
    monkeypatch.setenv("MY_KEY", "api_mine")
    assert _key(custom) == "api_mine"


def test_api_key_file_argument_wins_then_env_then_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arg_file, conf_file = tmp_path / "arg", tmp_path / "conf"
    arg_file.write_text("api_arg\n")
    conf_file.write_text("api_conf\n")
    config = parse_config({"settings": {"api_key_file": str(conf_file)}})
    monkeypatch.setenv("CLOSE_API_KEY", "api_env")
    assert _key(config, str(arg_file)) == "api_arg"
    assert _key(config) == "api_env"
    monkeypatch.delenv("CLOSE_API_KEY")
    assert _key(config) == "api_conf"


def test_missing_api_key_errors_name_the_source_not_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOSE_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match=r"set \$CLOSE_API_KEY"):
        _key(default_config())
    with pytest.raises(RuntimeError, match="cannot read the API key file .*nope"):
        _key(default_config(), str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        _key(default_config(), str(empty))


def test_committed_json_schema_is_up_to_date() -> None:
    committed = json.loads((ROOT / "schemas" / "config.schema.json").read_text())
    assert committed == json_schema(), "run: python schemas/generate.py"


def test_json_schema_describes_the_sections_and_not_the_api_key() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == {"settings", "mappings", "snapshot", "pipeline"}
    assert "api_key" not in json.dumps(schema["$defs"]["SettingsConfig"]["properties"]).replace(
        "api_key_", ""
    )


def test_job_config_is_immutable() -> None:
    config = default_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        config.settings = None  # type: ignore[misc]
    assert isinstance(config, JobConfig)


def test_writer_shards_are_one_locally_and_sixteen_elsewhere_unless_configured() -> None:
    from pipeline.config import DISTRIBUTED_WRITER_SHARDS
    from pipeline.runjob import RunRequest, shape_for
    from pipeline.sources import SourceOptions

    request = RunRequest(source=SourceOptions(source="files", input="events.jsonl"))
    config = default_config()
    assert shape_for(config, request, streaming=False, local=True).shards == 1
    assert shape_for(config, request, streaming=True, local=False).shards == DISTRIBUTED_WRITER_SHARDS == 16
    tuned = parse_config({"pipeline": {"writer_shards": 4}})
    assert shape_for(tuned, request, streaming=False, local=True).shards == 4
    assert shape_for(tuned, request, streaming=False, local=False).shards == 4


def test_fold_processes_are_one_fewer_than_the_cores_in_process_and_none_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.config import LOCAL_FOLD_PROCESSES_MAX
    from pipeline.runjob import RunRequest, runs_in_process, shape_for
    from pipeline.sources import SourceOptions

    request = RunRequest(source=SourceOptions(source="files", input="events.jsonl"))
    config = default_config()
    for cores, chosen in ((1, 0), (2, 1), (8, LOCAL_FOLD_PROCESSES_MAX), (None, 0)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert shape_for(config, request, streaming=False, local=True, in_process=True).fold_processes == chosen
        assert shape_for(config, request, streaming=False, local=False).fold_processes == 0
    tuned = parse_config({"pipeline": {"fold_processes": 3}})
    assert shape_for(tuned, request, streaming=False, local=True, in_process=True).fold_processes == 3
    assert shape_for(tuned, request, streaming=False, local=False, in_process=False).fold_processes == 0
    assert parse_config({"pipeline": {"fold_processes": 0}}).options().folders(in_process=True) == 0

    assert runs_in_process(PipelineOptions([]))
    assert runs_in_process(PipelineOptions(["--direct_running_mode=multi_threading"]))
    assert not runs_in_process(PipelineOptions(["--direct_running_mode=multi_processing"]))
    assert not runs_in_process(PipelineOptions(["--runner=DataflowRunner"]))
