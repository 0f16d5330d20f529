"""What the analysis reads of a rule: its condition leaves and its output values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...policy.model import Choice, Leaf, Rule, walk_leaves


def rule_leaves(rule: Rule) -> Iterator[Leaf]:
    """The leaves of the rule's condition, then of its conditional outputs' conditions."""
    yield from walk_leaves(rule.when)
    for o in rule.outputs:
        yield from value_leaves(o.value)


def value_leaves(value: Any) -> Iterator[Leaf]:
    if isinstance(value, Choice):
        yield from walk_leaves(value.when)
        yield from value_leaves(value.then)
        yield from value_leaves(value.otherwise)


def scalar_paths(rule: Rule) -> list[str]:
    return list(dict.fromkeys(o.path for o in rule.outputs))


def output_value(rule: Rule, path: str) -> Any:
    """The value the rule gives the output `path` (KeyError when it sets no such output)."""
    for o in rule.outputs:
        if o.path == path:
            return o.value
    raise KeyError(path)
