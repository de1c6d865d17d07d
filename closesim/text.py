"""How the simulated search index compares text: the simulator's own rules, kept apart from the
product's normalisation so that a change there cannot make the simulator agree with a bug."""

from __future__ import annotations

import json
from typing import Any


def as_text(value: Any) -> str:
    """A stored value as the index holds it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def fold(value: Any) -> str:
    """The case-folded form an analysed text field is indexed under (and a `text` condition's value
    is compared in): surrounding blanks dropped, letters lower-cased."""
    return as_text(value).strip().lower()


def term_key(value: Any, insensitive: bool) -> str:
    """What a `term` condition compares: the value as stored, or folded when the simulated
    organisation treats terms case-insensitively (SimConfig.term_case)."""
    return fold(value) if insensitive else as_text(value)
