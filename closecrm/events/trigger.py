"""Mapping triggers: a small subset of Segment's destination filter language, parsed and evaluated.

Grammar (keywords are case-insensitive)::

    trigger    := or
    or         := and (("or" | "||") and)*
    and        := not (("and" | "&&") not)*
    not        := ("not" | "!") not | primary
    primary    := "(" or ")" | call | operand [test]
    test       := ("=" | "==" | "!=" | "<" | "<=" | ">" | ">=") operand
                | ["not"] "exists" | ["not"] "contains" operand
                | ["not"] "in" list | ["not"] "match" operand
    call       := ("contains" | "match") "(" operand "," operand ")"
    operand    := path | "string" | 'string' | number | true | false | null
    list       := ("[" | "(") [operand ("," operand)*] ("]" | ")")

A path such as ``context.traits.plan`` resolves into the event JSON (numeric parts index
lists); ``traits.*`` falls back to ``context.traits.*`` as in the mapper. A missing value
equals ``null``; ``=`` never converts types (``10`` is not ``"10"``); ``<``/``>`` compare two
numbers or two strings and are false otherwise; ``exists`` means present and not null;
``match`` is a glob (``*``, ``?``); ``contains`` tests a substring or a list element. The
only bare operands allowed are ``true`` and ``false``.

Two mistakes that parse but could never match are refused: a bare word on the right of a
comparison or in a list (``type = identify`` reads the event's field ``identify``; quote the
text, or write ``$.identify`` for the field), and a ``type`` compared with text that is not a
Segment event type (``type = "identfy"``), since the parser dead-letters every other type.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from closecrm.events.parse import EVENT_TYPES, MISSING, resolve_path

# Parentheses and negations the parser (and evaluation) will descend through; both recurse, and a
# real trigger is a few levels deep, so a bound keeps a hostile one from overflowing the stack.
MAX_TRIGGER_DEPTH = 32


class TriggerError(ValueError):
    """A trigger that does not parse; says where (0-based ``position``, 1-based ``column``) and why."""

    def __init__(self, problem: str, position: int) -> None:
        self.problem = problem
        self.position = position
        self.column = position + 1
        super().__init__(f"{problem} at column {self.column}")


# ---------------------------------------------------------------------------- evaluation


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    left = None if left is MISSING else left
    right = None if right is MISSING else right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if type(left) is not type(right) and not (isinstance(left, str) and isinstance(right, str)):
        return False
    return bool(left == right)


def _ordered(op: str) -> Callable[[Any, Any], bool]:
    def compare(left: Any, right: Any) -> bool:
        comparable = (_is_number(left) and _is_number(right)) or (
            isinstance(left, str) and isinstance(right, str)
        )
        if not comparable:
            return False
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)

    return compare


def _contains(left: Any, right: Any) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return right in left
    if isinstance(left, list):
        return any(_equal(item, right) for item in left)
    return False


def _match(left: Any, right: Any) -> bool:
    return isinstance(left, str) and isinstance(right, str) and fnmatch.fnmatchcase(left, right)


_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    "=": _equal,
    "!=": lambda left, right: not _equal(left, right),
    "<": _ordered("<"),
    "<=": _ordered("<="),
    ">": _ordered(">"),
    ">=": _ordered(">="),
    "contains": _contains,
    "match": _match,
}


@dataclass(frozen=True)
class Path:
    parts: tuple[str, ...]

    def value(self, data: dict[str, Any]) -> Any:
        return resolve_path(data, self.parts)


@dataclass(frozen=True)
class Literal:
    literal: Any

    def value(self, data: dict[str, Any]) -> Any:
        return self.literal


Operand = Path | Literal


@dataclass(frozen=True)
class Compare:
    op: str
    left: Operand
    right: Operand

    def evaluate(self, data: dict[str, Any]) -> bool:
        return _BINARY[self.op](self.left.value(data), self.right.value(data))


@dataclass(frozen=True)
class InList:
    left: Operand
    options: tuple[Operand, ...]

    def evaluate(self, data: dict[str, Any]) -> bool:
        value = self.left.value(data)
        return any(_equal(value, option.value(data)) for option in self.options)


@dataclass(frozen=True)
class Exists:
    path: Path

    def evaluate(self, data: dict[str, Any]) -> bool:
        value = self.path.value(data)
        return value is not MISSING and value is not None


@dataclass(frozen=True)
class Constant:
    result: bool

    def evaluate(self, data: dict[str, Any]) -> bool:
        return self.result


@dataclass(frozen=True)
class Not:
    inner: Node

    def evaluate(self, data: dict[str, Any]) -> bool:
        return not self.inner.evaluate(data)


@dataclass(frozen=True)
class All:
    parts: tuple[Node, ...]

    def evaluate(self, data: dict[str, Any]) -> bool:
        return all(part.evaluate(data) for part in self.parts)


@dataclass(frozen=True)
class Any_:
    parts: tuple[Node, ...]

    def evaluate(self, data: dict[str, Any]) -> bool:
        return any(part.evaluate(data) for part in self.parts)


Node = Compare | InList | Exists | Constant | Not | All | Any_


@dataclass(frozen=True)
class Trigger:
    """A compiled trigger; plain data, so it pickles to Beam workers."""

    text: str
    root: Node

    def matches(self, event_dict: dict[str, Any]) -> bool:
        return self.root.evaluate(event_dict)


def compile_trigger(text: str) -> Trigger:
    """Parse ``text``; raise `TriggerError` naming the column and the problem."""
    if not isinstance(text, str):
        raise TriggerError("a trigger must be a string", 0)
    return Trigger(text=text, root=_Parser(text).parse())


# ---------------------------------------------------------------------------- lexing


@dataclass(frozen=True)
class _Token:
    kind: str  # string | number | word | path | op | end
    text: str
    value: Any
    position: int


_TOKEN_RE = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![A-Za-z0-9_$]))
  | (?P<path>[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z0-9_$]+)*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[=<>!(),\[\]])
  | (?P<quote>["'])
    """,
    re.VERBOSE,
)

_KEYWORDS = frozenset({"and", "or", "not", "exists", "contains", "in", "match", "true", "false", "null"})
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        found = _TOKEN_RE.match(text, pos)
        if not found:
            raise TriggerError(f"unexpected character {text[pos]!r}", pos)
        kind = found.lastgroup
        chunk = found.group()
        if kind == "quote":
            value, end = _read_string(text, pos)
            tokens.append(_Token("string", text[pos:end], value, pos))
            pos = end
            continue
        if kind == "number":
            number = float(chunk) if any(c in chunk for c in ".eE") else int(chunk)
            tokens.append(_Token("number", chunk, number, pos))
        elif kind == "path":
            lowered = chunk.lower()
            if lowered in _KEYWORDS:
                tokens.append(_Token("word", chunk, lowered, pos))
            else:
                parts = tuple(chunk.split("."))
                if parts[0] == "$" and len(parts) > 1:  # "$.traits.x" reads like a mapping path
                    parts = parts[1:]
                tokens.append(_Token("path", chunk, parts, pos))
        elif kind == "op":
            canonical = {"==": "=", "&&": "and", "||": "or", "!": "not"}.get(chunk, chunk)
            is_word = canonical in ("and", "or", "not")
            tokens.append(_Token("word" if is_word else "op", chunk, canonical, pos))
        pos = found.end()
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return "".join(out), pos + 1
        if char == "\\":
            if pos + 1 >= len(text):
                break
            escaped = text[pos + 1]
            if escaped == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[pos + 2 : pos + 6]):
                out.append(chr(int(text[pos + 2 : pos + 6], 16)))
                pos += 6
                continue
            if escaped not in _ESCAPES:
                raise TriggerError(f"unknown escape '\\{escaped}' in string", pos)
            out.append(_ESCAPES[escaped])
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise TriggerError("unterminated string", start)


# ---------------------------------------------------------------------------- parsing


def _describe(token: _Token) -> str:
    return "the end of the trigger" if token.kind == "end" else repr(token.text)


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def descend(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_TRIGGER_DEPTH:
            raise TriggerError(f"nested more than {MAX_TRIGGER_DEPTH} levels", token.position)

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_word(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.value in words

    def at_op(self, *ops: str) -> bool:
        return self.token.kind == "op" and self.token.value in ops

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise TriggerError("the trigger is empty", 0)
        node = self.parse_or()
        if self.token.kind != "end":
            raise TriggerError(
                f"unexpected {_describe(self.token)} after a complete condition (missing 'and'/'or'?)",
                self.token.position,
            )
        return node

    def parse_or(self) -> Node:
        parts = [self.parse_and()]
        while self.at_word("or"):
            self.advance()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else Any_(tuple(parts))

    def parse_and(self) -> Node:
        parts = [self.parse_not()]
        while self.at_word("and"):
            self.advance()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def parse_not(self) -> Node:
        if self.at_word("not"):
            self.descend(self.advance())
            node = Not(self.parse_not())
            self.depth -= 1
            return node
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.token
        if self.at_op("("):
            self.descend(self.advance())
            node = self.parse_or()
            self.expect_op(")", f"expected ')' (to close the '(' of column {token.position + 1})")
            self.depth -= 1
            return node
        if self.at_word("contains", "match") and self.tokens[self.index + 1].text == "(":
            return self.parse_call()
        if token.kind == "end":
            raise TriggerError("expected a condition", token.position)
        left = self.parse_operand(f"expected a condition, found {_describe(token)}")
        return self.parse_test(left, token)

    def parse_call(self) -> Node:
        name = self.advance()
        self.advance()  # "("
        left = self.parse_operand(f"expected a value as the first argument of {name.value}()")
        self.expect_op(",", f"expected ',' in {name.value}()")
        right = self.parse_operand(f"expected a value as the second argument of {name.value}()")
        self.expect_op(")", f"expected ')' to close {name.value}()")
        return Compare(name.value, left, right)

    def parse_test(self, left: Operand, left_token: _Token) -> Node:
        token = self.token
        if self.at_op("=", "!=", "<", "<=", ">", ">="):
            self.advance()
            right_token = self.token
            right = self.parse_operand(f"expected a value after '{token.text}'", right_of=token.text)
            if token.value in ("=", "!="):
                _check_type_value(left, right_token)
                _check_type_value(right, left_token)
            return Compare(token.value, left, right)
        negate = False
        if self.at_word("not") and self.tokens[self.index + 1].kind == "word":
            negate = True
            self.advance()
            token = self.token
        node: Node
        if self.at_word("exists"):
            self.advance()
            if not isinstance(left, Path):
                raise TriggerError("'exists' needs a path on its left", left_token.position)
            node = Exists(left)
        elif self.at_word("contains", "match"):
            self.advance()
            right = self.parse_operand(f"expected a value after '{token.text}'", right_of=token.text)
            node = Compare(token.value, left, right)
        elif self.at_word("in"):
            self.advance()
            node = InList(left, self.parse_list(left))
        elif negate:
            raise TriggerError("expected 'exists', 'contains', 'in' or 'match' after 'not'", token.position)
        elif isinstance(left, Literal) and isinstance(left.literal, bool):
            return Constant(left.literal)
        else:
            raise TriggerError(
                f"expected an operator (=, !=, <, >, exists, contains, in, match) after "
                f"{_describe(left_token)}, found {_describe(token)}",
                token.position,
            )
        return Not(node) if negate else node

    def parse_list(self, left: Operand) -> tuple[Operand, ...]:
        opening = self.token
        if not self.at_op("[", "("):
            raise TriggerError('expected a list like ["a", "b"] after \'in\'', opening.position)
        closing = "]" if opening.value == "[" else ")"
        self.advance()
        items: list[Operand] = []
        if self.at_op(closing):
            self.advance()
            return ()
        while True:
            item_token = self.token
            items.append(self.parse_operand("expected a value in the list", right_of="in"))
            _check_type_value(left, item_token)
            if self.at_op(","):
                self.advance()
                continue
            self.expect_op(closing, f"expected ',' or '{closing}' in the list")
            return tuple(items)

    def parse_operand(self, problem: str, right_of: str | None = None) -> Operand:
        token = self.token
        if token.kind == "path":
            if right_of is not None and len(token.value) == 1 and not token.text.startswith("$"):
                # `type = identify` reads the event's field "identify", which no event has: it never matches
                raise TriggerError(
                    f"the bare word {token.text} after '{right_of}' names a field of the event, not text "
                    f'(write "{token.text}" in quotes for the text, or $.{token.text} for the field)',
                    token.position,
                )
            self.advance()
            return Path(token.value)
        if token.kind in ("string", "number"):
            self.advance()
            return Literal(token.value)
        if self.at_word("true", "false", "null"):
            self.advance()
            return Literal({"true": True, "false": False, "null": None}[token.value])
        raise TriggerError(problem, token.position)

    def expect_op(self, op: str, problem: str) -> None:
        if not self.at_op(op):
            raise TriggerError(problem, self.token.position)
        self.advance()


def _check_type_value(operand: Operand, value_token: _Token) -> None:
    """A ``type`` compared with a string that is not an event type can never match: events of any
    other type are dead-lettered before mappings see them."""
    if not (isinstance(operand, Path) and operand.parts == ("type",)):
        return
    if value_token.kind != "string" or value_token.value in EVENT_TYPES:
        return
    known = sorted(EVENT_TYPES)
    close = difflib.get_close_matches(str(value_token.value).lower(), known, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    raise TriggerError(
        f"{value_token.text} is not an event type ({', '.join(known)}); {hint}"
        "events of any other type are dead-lettered before a mapping sees them",
        value_token.position,
    )
