"""Loading rule files: YAML that is data only, with a position for every value.

Rule files are written by people and may be written by an attacker, so:
- `yaml.SafeLoader` only (no Python tags), anchors/aliases refused (no
  "billion laughs"), duplicate keys refused (YAML would silently keep the last);
- floats become `Decimal` from their source text (money is never binary);
- every mapping remembers where each key and value stand, so errors can say
  `file:line:column`.
"""

from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_FILE_BYTES = 1_000_000
MAX_NODES = 200_000
MAX_DEPTH = 64


class Pos(tuple):
    """(file, line, column), 1-based, printable as file:line:column."""

    __slots__ = ()

    def __new__(cls, file: str, line: int, column: int) -> Pos:
        return super().__new__(cls, (file, line, column))

    def __getnewargs__(self) -> tuple[str, int, int]:  # pickled (a check run apart)
        return (self[0], self[1], self[2])

    @property
    def file(self) -> str:
        return self[0]

    @property
    def line(self) -> int:
        return self[1]

    @property
    def column(self) -> int:
        return self[2]

    def __str__(self) -> str:
        return f"{self[0]}:{self[1]}:{self[2]}"


class YamlError(Exception):
    def __init__(self, pos: Pos, message: str, hint: str = "") -> None:
        super().__init__(f"{pos}: {message}")
        self.pos = pos
        self.message = message
        self.hint = hint


class PosDict(dict):
    """A mapping that knows the position of itself, its keys and its values."""

    pos: Pos
    key_pos: dict[Any, Pos]
    value_pos: dict[Any, Pos]


class PosList(list):
    pos: Pos
    item_pos: list[Pos]


def _pos(file: str, node: Any) -> Pos:
    mark = node.start_mark
    return Pos(file, mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    file_name = "<rules>"

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D401
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise YamlError(
                Pos(self.file_name, mark.line + 1, mark.column + 1),
                "YAML aliases (*name) are not allowed in rule files",
                "write the value out; use a named constant or preset to share it",
            )
        return super().compose_node(parent, index)


def _construct_float(loader: yaml.SafeLoader, node: ScalarNode) -> Decimal:
    text = node.value.replace("_", "")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        pos = _pos(loader.file_name, node)
        raise YamlError(pos, f"not a decimal number: {node.value!r}") from exc
    if not value.is_finite():
        raise YamlError(_pos(loader.file_name, node), f"not a finite number: {node.value!r}")
    return value


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _check_shape(file: str, root: Any) -> None:
    count = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YamlError(_pos(file, node), f"rule file too large (more than {MAX_NODES} values)")
        if depth > MAX_DEPTH:
            raise YamlError(_pos(file, node), f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, MappingNode):
            for k, v in node.value:
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(node, SequenceNode):
            stack.extend((v, depth + 1) for v in node.value)


_PLAIN_TAGS = {MappingNode: "tag:yaml.org,2002:map", SequenceNode: "tag:yaml.org,2002:seq"}


def _build(loader: _Loader, node: Any) -> Any:
    file = loader.file_name
    expected = _PLAIN_TAGS.get(type(node))
    if expected is not None and node.tag != expected:
        raise YamlError(_pos(file, node), f"YAML tag {node.tag!r} is not allowed in rule files",
                        "rule files are plain data: remove the !tag")
    if isinstance(node, MappingNode):
        out = PosDict()
        out.pos = _pos(file, node)
        out.key_pos = {}
        out.value_pos = {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = _build(loader, key_node)
            if isinstance(key, (dict, list)):
                raise YamlError(_pos(file, key_node), "a mapping key must be a plain value")
            if key in out:
                raise YamlError(
                    _pos(file, key_node),
                    f"duplicate key {key!r} (first at line {out.key_pos[key].line})",
                    "YAML keeps only the last of duplicate keys; remove one",
                )
            out[key] = _build(loader, value_node)
            out.key_pos[key] = _pos(file, key_node)
            out.value_pos[key] = _pos(file, value_node)
        return out
    if isinstance(node, SequenceNode):
        seq = PosList(_build(loader, item) for item in node.value)
        seq.pos = _pos(file, node)
        seq.item_pos = [_pos(file, item) for item in node.value]
        return seq
    try:
        value = loader.construct_object(node, deep=True)
    except ValueError as exc:  # a date that does not exist, e.g. 2026-02-30
        raise YamlError(_pos(file, node), f"{node.value!r} is not a valid date ({exc})",
                        "write a date that exists, YYYY-MM-DD") from None
    if isinstance(value, datetime.datetime):
        raise YamlError(_pos(file, node), "timestamps are not supported; write a date YYYY-MM-DD")
    if isinstance(value, bytes):
        raise YamlError(_pos(file, node), "binary values are not supported")
    return value


def load_yaml(text: str | bytes, file_name: str) -> Any:
    """Parse one rule file into PosDict/PosList/scalars; raises YamlError."""
    if len(text) > MAX_FILE_BYTES:
        raise YamlError(
            Pos(file_name, 1, 1), f"rule file is {len(text)} bytes; the limit is {MAX_FILE_BYTES}"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(Pos(file_name, 1, 1), f"not UTF-8 text ({exc.reason})") from exc
    loader = _Loader(text)
    loader.file_name = file_name
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_shape(file_name, root)
        return _build(loader, root)
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(file_name, mark.line + 1, mark.column + 1) if mark else Pos(file_name, 1, 1)
        raise YamlError(pos, f"YAML syntax: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise YamlError(Pos(file_name, 1, 1), f"YAML: {exc}") from exc
    except RecursionError as exc:
        raise YamlError(Pos(file_name, 1, 1), "nesting too deep") from exc
    finally:
        loader.dispose()
