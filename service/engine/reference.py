"""The rule semantics in plain Python: the yardstick the engine is tested against.

A context is a flat dict of path -> value (Decimal, int, date, str, bool);
an absent path is simply not in it (or None). Every leaf test except `missing`
is false on an absent path; `not` is plain negation. The resolver also uses
`holds` for the `if` of conditional outputs, so there is one meaning of a
condition in the project.
"""

from __future__ import annotations

from typing import Any

from ..policy import expr as ex
from ..policy.model import (
    EQ,
    EXISTS,
    GT,
    GTE,
    IN,
    LT,
    LTE,
    MISSING,
    NE,
    NOT_IN,
    All,
    AnyOf,
    Leaf,
    Not,
    Rule,
    Ruleset,
)

#: The comparison operators of a leaf over plain values.
COMPARE = {
    EQ: lambda a, b: a == b,
    NE: lambda a, b: a != b,
    LT: lambda a, b: a < b,
    LTE: lambda a, b: a <= b,
    GT: lambda a, b: a > b,
    GTE: lambda a, b: a >= b,
}


def getter(ctx: dict, rs: Ruleset):
    def get(name: str) -> Any:
        value = ctx.get(name)
        if value is None:
            value = rs.constant(name)
        return value

    return get


def operand(leaf: Leaf, ctx: dict, rs: Ruleset) -> Any:
    """The right-hand value of a comparison; None when it cannot be computed."""
    if not leaf.is_expr:
        return leaf.value
    try:
        return ex.evaluate(leaf.value, getter(ctx, rs), rs.tables)
    except ex.Undefined:
        return None


def leaf_holds(leaf: Leaf, ctx: dict, rs: Ruleset) -> bool:
    value = ctx.get(leaf.path)
    if leaf.op == MISSING:
        return value is None
    if value is None:
        return False
    if leaf.op == EXISTS:
        return True
    if leaf.op == IN:
        return value in leaf.value
    if leaf.op == NOT_IN:
        return value not in leaf.value
    other = operand(leaf, ctx, rs)
    if other is None:
        return False
    return COMPARE[leaf.op](value, other)


def holds(cond: Any, ctx: dict, rs: Ruleset) -> bool:
    if isinstance(cond, Leaf):
        return leaf_holds(cond, ctx, rs)
    if isinstance(cond, All):
        return all(holds(c, ctx, rs) for c in cond.items)
    if isinstance(cond, AnyOf):
        return any(holds(c, ctx, rs) for c in cond.items)
    if isinstance(cond, Not):
        return not holds(cond.item, ctx, rs)
    raise TypeError(f"not a condition: {cond!r}")


def matching_rules(rs: Ruleset, stage: str, ctx: dict) -> list[Rule]:
    return [r for r in rs.rules if r.stage == stage and holds(r.when, ctx, rs)]


class ReferenceMatcher:
    """Finds a stage's matching rules by walking the conditions in Python."""

    name = "reference"

    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs
        self._by_stage = {s: rs.stage_rules(s) for s in rs.stages}

    def run(self, ctx: dict, on_stage) -> None:
        """For each stage in order: find matches, let `on_stage(stage, rules)` resolve
        them into `ctx` (so the next stage sees the outputs)."""
        for stage in self.rs.stages:
            on_stage(stage, [r for r in self._by_stage[stage] if holds(r.when, ctx, self.rs)])
