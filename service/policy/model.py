"""The loaded, validated form of a ruleset: plain immutable data.

Everything the compiler, the reference evaluator and the resolver need is
here, already type-checked; nothing in it can run code.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .yamlsafe import Pos

# Leaf operators of conditions.
EQ, NE, IN, NOT_IN, LT, LTE, GT, GTE, EXISTS, MISSING = (
    "eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "exists", "missing",
)
COMPARISONS = (LT, LTE, GT, GTE)
OPERATORS = (EQ, NE, IN, NOT_IN, LT, LTE, GT, GTE, EXISTS, MISSING)


@dataclass(frozen=True)
class Leaf:
    """One test on one path.

    `value` is: for eq/ne a literal (str, bool, Decimal, int, date) or, when
    `is_expr`, an expression tree; for in/not_in a tuple of literals; for
    comparisons an expression tree (a literal number is a `Num`); None for
    exists/missing. Every leaf except `missing` is false when the path is absent.
    """

    path: str
    op: str
    value: Any
    is_expr: bool
    kind: str  # the path's type name (money, int, date, enum, bool, ...)
    pos: Pos
    #: For in/not_in: the list or table constant the values come from (None: written
    #: out). Not part of the meaning (equality and hash): coverage reports by it.
    constant: str | None = field(default=None, compare=False)

    def __hash__(self) -> int:  # positions differ, meaning does not
        return hash((self.path, self.op, repr(self.value)))


@dataclass(frozen=True)
class All:
    items: tuple
    pos: Pos | None = None


@dataclass(frozen=True)
class AnyOf:
    items: tuple
    pos: Pos | None = None


@dataclass(frozen=True)
class Not:
    item: Any
    pos: Pos | None = None


TRUE = All(())


@dataclass(frozen=True)
class Literal:
    value: Any  # str, bool, None, Decimal, int, date


@dataclass(frozen=True)
class Expr:
    node: Any
    kind: str  # expression kind of the result (amount, int, date)
    text: str


@dataclass(frozen=True)
class Choice:
    """`{if: condition, then: value, else: value}`."""

    when: Any
    then: Any
    otherwise: Any


@dataclass(frozen=True)
class Template:
    """A text line with `{expression}` placeholders; parts alternate text / Expr|Ref-name."""

    parts: tuple
    text: str


@dataclass(frozen=True)
class Output:
    path: str
    value: Any  # Literal | Expr | Choice
    pos: Pos


@dataclass(frozen=True, eq=False)  # identity: each rule is one object, hashed cheaply
class Rule:
    id: str
    description: str
    stage: str
    priority: int
    when: Any
    outputs: tuple  # tuple[Output, ...] for scalar outputs
    appends: tuple  # tuple[tuple[path, tuple[Template, ...]], ...] for list outputs
    basis: str | None
    pos: Pos
    order: int  # position in the ruleset, breaks ties deterministically

    def sets(self, path: str) -> bool:
        return any(o.path == path for o in self.outputs)


@dataclass(frozen=True)
class Ruleset:
    name: str
    version: str
    sha256: str
    directory: str
    files: tuple[str, ...]
    stages: tuple[str, ...]
    numbers: dict[str, Decimal]  # scalar named constants
    dates: dict[str, datetime.date]
    lists: dict[str, tuple]  # list constants
    tables: dict[str, dict[str, Decimal]]  # map constants: key -> number
    rules: tuple[Rule, ...]
    var_kinds: dict[str, str] = field(default_factory=dict)
    decision_stage: str = ""
    #: (file name, exact text) of every rule file, in name order: what the sha256 covers
    #: (`loader.sources_digest`), kept so the audit log can archive the ruleset.
    sources: tuple[tuple[str, str], ...] = ()

    def stage_rules(self, stage: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.stage == stage)

    def constant(self, name: str) -> Any:
        if name in self.numbers:
            return self.numbers[name]
        return self.dates.get(name)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


def walk_leaves(cond: Any):
    """Every Leaf of a condition tree, depth first."""
    if isinstance(cond, Leaf):
        yield cond
    elif isinstance(cond, (All, AnyOf)):
        for item in cond.items:
            yield from walk_leaves(item)
    elif isinstance(cond, Not):
        yield from walk_leaves(cond.item)


def is_date(value: Any) -> bool:
    return isinstance(value, datetime.date) and not isinstance(value, datetime.datetime)
