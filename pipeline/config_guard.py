"""Bounds on a config document's size and depth, checked before anything builds or walks its values.

An alias in YAML stands for a copy of the node it names, so a few lines of anchors can describe billions
of values ("billion laughs"), and any deep nest can overflow a recursive consumer. `check_yaml` reads the
YAML event stream once, builds nothing, and refuses a document whose expanded size or depth passes the
limits; `check_depth` bounds the depth of already-parsed JSON, which has no aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import yaml


@dataclass(frozen=True)
class Limits:
    values: int  # values after expanding every alias into a copy of what it names
    text: int  # characters of scalar text after expanding aliases
    depth: int  # levels of nested collections


class TooBig(Exception):
    """A document over a limit; ``where`` is the path (keys and indexes) of the value where it went over."""

    def __init__(self, where: list[int | str], problem: str) -> None:
        super().__init__(problem)
        self.where = where[:8]  # where it goes wrong is inside this value; a longer path only adds noise
        self.problem = problem


def check_yaml(text: str | IO[str], limits: Limits) -> None:
    """Raise `TooBig` when the YAML document, with its aliases expanded, passes ``limits``.

    Each anchor's expanded size is known when its node ends; an alias adds that size, so the running
    total is the size of the document as any consumer would see it. Also refuses an alias inside its
    own anchor (a cycle). Syntax errors surface as `yaml.YAMLError`, as `yaml.safe_load` would raise them.
    """
    walk = _Walk(limits)
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        walk.step(event)


def check_depth(data: Any, limits: Limits) -> None:
    """Raise `TooBig` when parsed JSON nests deeper than ``limits.depth``; without aliases, its size is the file's."""
    todo: list[tuple[Any, list[int | str]]] = [(data, [])]
    while todo:
        value, where = todo.pop()
        if len(where) > limits.depth:
            raise TooBig(where[:-1], f"nested more than {limits.depth} levels")
        if isinstance(value, dict):
            todo.extend((v, [*where, str(k)]) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, [*where, i]) for i, v in enumerate(value))


class _Frame:
    """An open YAML collection while its events stream past: its place and its expanded size so far."""

    __slots__ = ("anchor", "is_map", "label", "values", "text", "items", "key", "expect_key")

    def __init__(self, anchor: str | None, is_map: bool, label: int | str | None) -> None:
        self.anchor = anchor
        self.is_map = is_map
        self.label = label  # its place in the parent: index, key, or None (the root, or a key)
        self.values = 1
        self.text = 0
        self.items = 0
        self.key: str | None = None
        self.expect_key = True


class _Walk:
    """One pass over a YAML event stream: the open collections, each anchor's expanded size, the totals."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, characters) it expands to
        self.stack: list[_Frame] = []
        self.values = 0
        self.text = 0
        self.aliased = False  # whether the totals so far count an alias's copy (for the message)

    def step(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self.scalar(event)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event)
        elif isinstance(event, yaml.CollectionStartEvent):
            self.start(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            self.end()
        elif isinstance(event, yaml.DocumentStartEvent):
            self.stack.clear()

    def scalar(self, event: yaml.ScalarEvent) -> None:
        label = self.enter(key=event.value)
        self.add(1, len(event.value), label)
        if event.anchor is not None:
            self.sizes[event.anchor] = (1, len(event.value))

    def alias(self, event: yaml.AliasEvent) -> None:
        label = self.enter(key="?")
        if any(frame.anchor == event.anchor for frame in self.stack):
            raise TooBig(self.where(label), f"the alias *{event.anchor} refers to the value that contains it")
        values, chars = self.sizes.get(event.anchor, (1, 0))  # an unknown anchor: yaml.safe_load reports it
        self.aliased = True
        self.add(values, chars, label)

    def start(self, event: yaml.CollectionStartEvent) -> None:
        label = self.enter(key="?")
        if len(self.stack) >= self.limits.depth:
            raise TooBig(self.where(label), f"nested more than {self.limits.depth} levels")
        self.stack.append(_Frame(event.anchor, isinstance(event, yaml.MappingStartEvent), label))
        self.values += 1  # the collection itself; its parent counts it when it ends, with what it holds

    def end(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            self.sizes[frame.anchor] = (frame.values, frame.text)
        if self.stack:
            self.stack[-1].values += frame.values
            self.stack[-1].text += frame.text

    def enter(self, key: str) -> int | str | None:
        """The label of the node starting now; when the node is a mapping's key, ``key`` names the value after it."""
        is_key = bool(self.stack) and self.stack[-1].is_map and self.stack[-1].expect_key
        label = self.place()
        if is_key:
            self.stack[-1].key = key
        return label

    def place(self) -> int | str | None:
        """The label of the node starting now, in its parent; advances the parent."""
        if not self.stack:
            return None
        parent = self.stack[-1]
        if parent.is_map:
            if parent.expect_key:
                parent.expect_key = False
                return None
            parent.expect_key = True
            return parent.key if parent.key is not None else "?"
        parent.items += 1
        return parent.items - 1

    def add(self, values: int, chars: int, label: int | str | None) -> None:
        """Count a node's expanded size in the totals and its parent's; raise when a total passes its limit."""
        self.values += values
        self.text += chars
        if self.stack:
            self.stack[-1].values += values
            self.stack[-1].text += chars
        how = "expands to" if self.aliased else "holds"
        why = " through YAML aliases" if self.aliased else ""
        if self.values > self.limits.values:
            raise TooBig(self.where(label), f"{how} more than {self.limits.values:,} values{why}")
        if self.text > self.limits.text:
            mib = self.limits.text // (1024 * 1024)
            raise TooBig(self.where(label), f"{how} more than {mib} MiB of text{why}")

    def where(self, label: int | str | None = None) -> list[int | str]:
        parts = [f.label for f in self.stack[1:]]
        parts.append(label)
        return [p for p in parts if p is not None]
