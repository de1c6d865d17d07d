"""pipeline.config_guard on its own: the expanded size and depth of a YAML document, and the path of the
value where it goes over (load_config's refusals of whole files are in test_config_bombs.py)."""

from __future__ import annotations

import io

import pytest
import yaml

from pipeline.config_guard import Limits, TooBig, check_depth, check_yaml

LIMITS = Limits(values=8, text=1024 * 1024, depth=3)


def refusal(text: str) -> tuple[list[int | str], str]:
    with pytest.raises(TooBig) as caught:
        check_yaml(text, LIMITS)
    return caught.value.where, caught.value.problem


def test_a_document_within_the_limits_passes_aliases_included() -> None:
    check_yaml("[&x [1, 2], *x, z]", LIMITS)  # 8 values once *x is expanded: at the limit


def test_an_alias_counts_as_a_copy_of_what_it_names() -> None:
    assert refusal("a: &x [1, 2, 3]\nb: [*x, *x]\n") == (
        ["b", 0],
        "expands to more than 8 values through YAML aliases",
    )


def test_a_document_without_aliases_holds_too_many_values() -> None:
    assert refusal("[1, 2, 3, 4, 5, 6, 7, 8, 9]") == ([7], "holds more than 8 values")


def test_text_is_counted_across_scalars() -> None:
    half = "x" * (600 * 1024)
    assert refusal(f"k: [{half}, {half}]") == (["k", 1], "holds more than 1 MiB of text")


def test_nesting_deeper_than_the_limit_names_keys_and_indexes() -> None:
    assert refusal("{a: [x, {b: [1]}]}") == (["a", 1, "b"], "nested more than 3 levels")


def test_an_alias_inside_its_own_anchor_is_a_cycle() -> None:
    assert refusal("&loop [a, *loop]") == ([1], "the alias *loop refers to the value that contains it")


def test_a_stream_is_read_like_text() -> None:
    with pytest.raises(TooBig, match="expands to more than 8 values"):
        check_yaml(io.StringIO("a: &x [1, 2, 3]\nb: [*x, *x]\n"), LIMITS)


def test_a_syntax_error_is_yamls_own() -> None:
    with pytest.raises(yaml.YAMLError):
        check_yaml("a: [1, 2", LIMITS)


def test_parsed_json_deeper_than_the_limit_is_refused_with_its_path() -> None:
    check_depth({"a": [{"b": 1}]}, LIMITS)
    with pytest.raises(TooBig) as caught:
        check_depth({"a": [{"b": [[1]]}]}, LIMITS)
    assert (caught.value.where, caught.value.problem) == (["a", 0, "b"], "nested more than 3 levels")
