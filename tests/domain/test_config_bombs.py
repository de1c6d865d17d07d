"""Hostile configs are refused quickly, with a `path: problem` line, before anything runs.

A YAML alias bomb loads as a small graph of shared nodes but expands to billions of values as soon
as anything walks it; a trigger nested hundreds of levels deep overflows a recursive parser. Both
must be reported as config problems, in little time and memory.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from closecrm.events.trigger import MAX_TRIGGER_DEPTH, TriggerError, compile_trigger
from pipeline.config import MAX_CONFIG_BYTES, ConfigError, load_config
from tests.cli.helpers_cli import assert_one_line_error, invoke

UNREACHABLE = "http://127.0.0.1:9/api/v1/"  # nothing listens: a config that passes fails fast here
CF_PATH = "mappings[0].fields.lead_custom_fields.cf_plan"


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A 'billion laughs' list literal: each level is `width` aliases of the one before."""
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        items.append(f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "[" + ", ".join(items) + "]"


def _mapping_config(literal: str, trigger: str = 'type = "identify"') -> str:
    return (
        "mappings:\n"
        "  - name: bomb\n"
        f"    trigger: {trigger}\n"
        "    fields:\n"
        "      lead_custom_fields:\n"
        f"        cf_plan: {literal}\n"
    )


def _load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    return caught.value.problems


def test_a_yaml_alias_bomb_is_refused_fast_and_in_little_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_mapping_config(_alias_bomb()))
    tracemalloc.start()
    started = time.monotonic()
    try:
        problems = _load_problems(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 50 * 1024 * 1024
    assert len(problems) == 1
    assert problems[0].startswith(CF_PATH), problems
    assert "aliases" in problems[0]


def test_an_alias_bomb_fails_close_sync_validate_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_mapping_config(_alias_bomb()))
    result = invoke(["validate", "--config", str(path), "--close-url", UNREACHABLE], env={"CLOSE_API_KEY": "k"})
    assert_one_line_error(result, "invalid config", CF_PATH, "aliases")


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "mappings:\n"
        "  - name: one\n"
        "    trigger: &t type = \"identify\"\n"
        "    fields: &f {contact_email: $.traits.email, lead_custom_fields: {cf_plan: [a, b]}}\n"
        "  - name: two\n"
        "    trigger: *t\n"
        "    fields: *f\n"
    )
    config = load_config(str(path))
    assert [m.fields for m in config.mappings] == [config.mappings[0].fields] * 2


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text(_mapping_config("&loop [a, *loop]"))
    problems = _load_problems(path)
    assert problems[0].startswith(f"{CF_PATH}[1]:"), problems
    assert "refers to the value that contains it" in problems[0]


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json"])
def test_deeply_nested_values_are_refused_without_a_recursion_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"snapshot": {"fields": ' + "[" * 50_000 + "]" * 50_000 + "}}")
    problems = _load_problems(path)
    assert len(problems) == 1 and "nested more than" in problems[0], problems


def test_a_config_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1) + "settings: {}\n")
    problems = _load_problems(path)
    assert problems == [f"(file): larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; is this the right file?"]


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("settings: {default_lead_status_id: 'stat_é'}\n".encode("latin-1"))
    problems = _load_problems(path)
    assert len(problems) == 1 and problems[0].startswith("(file): not UTF-8 text"), problems


# ---------------------------------------------------------------------------- trigger nesting


def _nested(levels: int) -> str:
    return "(" * levels + 'type = "track"' + ")" * levels


def test_a_trigger_nested_300_levels_is_a_config_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "parens.yaml"
    path.write_text(_mapping_config("[a]", trigger="'" + _nested(300) + "'"))
    problems = _load_problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"mappings[0].trigger: nested more than {MAX_TRIGGER_DEPTH} levels"), problems


def test_a_deep_trigger_fails_close_sync_validate_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "parens.yaml"
    path.write_text(_mapping_config("[a]", trigger="'" + _nested(300) + "'"))
    result = invoke(["validate", "--config", str(path), "--close-url", UNREACHABLE], env={"CLOSE_API_KEY": "k"})
    line = assert_one_line_error(result, "invalid config", "mappings[0].trigger: nested more than 32 levels")
    assert "recursion" not in line


@pytest.mark.parametrize(
    "text",
    [
        _nested(MAX_TRIGGER_DEPTH + 1),
        "not " * (MAX_TRIGGER_DEPTH + 1) + 'type = "track"',
        "!" * 5000 + 'type = "track"',
        "(not " * 20 + 'type = "track"' + ")" * 20,
    ],
    ids=["parentheses", "not", "bang-5000", "mixed"],
)
def test_the_trigger_parser_bounds_nesting(text: str) -> None:
    with pytest.raises(TriggerError, match=f"nested more than {MAX_TRIGGER_DEPTH} levels"):
        compile_trigger(text)


def test_nesting_up_to_the_limit_still_compiles() -> None:
    event = {"type": "track"}
    assert compile_trigger(_nested(MAX_TRIGGER_DEPTH)).matches(event)
    assert compile_trigger("not " * MAX_TRIGGER_DEPTH + 'type = "track"').matches(event)
    assert compile_trigger("(not " * 16 + 'type = "track"' + ")" * 16).matches(event)
