"""Why not: for every rule that did not match, the first condition that was false.

`why_not(rs, facts)` runs the stages in order as `Decider.evaluate` does (the
reference semantics of `reference.py` find each stage's matches, `resolve_stage`
writes its outputs, so a later stage sees what earlier ones set) and, for each rule
of a stage that did not match the context as it was when that stage ran, reports
one entry: the fact path of the first false condition (a `when` is tried in written
order; in an `all` the first false item, recursively), its value, what the rule
needs there, and a one-line message. Entries come in stage order, then priority
descending (file order on ties). A condition is "false" exactly when
`reference.holds` says so: one meaning of a condition.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .. import amounts as amounts_mod
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
    walk_leaves,
)
from .decide import context
from .reference import getter, holds, leaf_holds, operand
from .resolver import Resolution, plan_rules, resolve_stage

_SYMBOLS = {LT: "<", LTE: "<=", GT: ">", GTE: ">="}


@dataclass(frozen=True)
class _Miss:
    """Why one condition is false."""

    path: str
    actual: Any  # the JSON form of the value at `path` (None: absent)
    needs: str  # what the condition requires
    clause: str  # the message without the rule id
    brief: str  # the same, short enough to list among the alternatives of an `any`


def why_not(rs: Ruleset, facts: dict) -> list[dict]:
    """One entry per rule that did not match, in stage order then priority descending:
    `{"stage", "rule", "priority", "path", "actual", "needs", "message"}`. `facts` are
    validated facts (`service.facts.validate_facts`)."""
    res = Resolution(context(facts, amounts_mod.compute_amounts(facts)))
    plans = plan_rules(rs)
    entries: list[dict] = []
    for stage in rs.stages:
        rules = sorted(rs.stage_rules(stage), key=lambda r: (-r.priority, r.order))
        matched: list[Rule] = []
        for rule in rules:
            miss = _miss(rule.when, res.ctx, rs)
            if miss is None:
                matched.append(rule)
            else:
                entries.append({"stage": stage, "rule": rule.id, "priority": rule.priority,
                                "path": miss.path, "actual": miss.actual,
                                "needs": miss.needs, "message": f"{rule.id}: {miss.clause}"})
        resolve_stage(rs, stage, matched, res, plans)
    return entries


# ------------------------------------------------------------------ conditions


def _miss(cond: Any, ctx: dict, rs: Ruleset) -> _Miss | None:
    """Why `cond` is false in `ctx`; None when it holds (exactly when `holds` says so)."""
    if isinstance(cond, Leaf):
        return None if leaf_holds(cond, ctx, rs) else _leaf_miss(cond, ctx, rs)
    if isinstance(cond, All):
        for item in cond.items:
            miss = _miss(item, ctx, rs)
            if miss is not None:
                return miss
        return None
    if isinstance(cond, AnyOf):
        misses = []
        for item in cond.items:
            miss = _miss(item, ctx, rs)
            if miss is None:
                return None
            misses.append(miss)
        listed = "; ".join(m.brief for m in misses)
        needs = "any of: " + "; ".join(_describe(item, ctx, rs) for item in cond.items)
        return _Miss(misses[0].path, misses[0].actual, needs, f"none of: {listed}",
                     f"none of ({listed})")
    if isinstance(cond, Not):
        return _not_miss(cond.item, ctx, rs) if holds(cond.item, ctx, rs) else None
    raise TypeError(f"not a condition: {cond!r}")


def _leaf_miss(leaf: Leaf, ctx: dict, rs: Ruleset) -> _Miss:
    value = ctx.get(leaf.path)
    needs = _needs(leaf, ctx, rs)
    said = f"{leaf.path} is {_text(value)}"
    return _Miss(leaf.path, _json(value), needs, f"{said}, the rule needs {needs}",
                 f"{said} (needs {needs})")


def _not_miss(inner: Any, ctx: dict, rs: Ruleset) -> _Miss:
    """Why `not: inner` is false: `inner` held."""
    if isinstance(inner, Leaf):
        if inner.op in (EXISTS, MISSING):  # not-present is "missing", and the reverse
            flipped = Leaf(inner.path, MISSING if inner.op == EXISTS else EXISTS, None, False,
                           inner.kind, inner.pos)
            return _leaf_miss(flipped, ctx, rs)
        value = ctx.get(inner.path)
        held = _needs(inner, ctx, rs)
        said = f"{inner.path} is {_text(value)}"
        # `x is v, the rule needs it not to be` when the test was equality with v itself.
        tail = "" if inner.op == EQ else f" {held}"
        return _Miss(inner.path, _json(value), f"not {held}",
                     f"{said}, the rule needs it not to be{tail}", f"{said} (needs not {held})")
    # The path shown: the first leaf that held (one reason the whole held), else the first.
    leaves = list(walk_leaves(inner))
    first = next((leaf for leaf in leaves if leaf_holds(leaf, ctx, rs)),
                 leaves[0] if leaves else None)
    path = first.path if first is not None else ""
    described = _describe(inner, ctx, rs)
    return _Miss(path, _json(ctx.get(path)), f"not ({described})",
                 f"{described} holds, the rule needs it not to",
                 f"{described} holds (needs it not to)")


def _describe(cond: Any, ctx: dict, rs: Ruleset) -> str:
    """A whole condition as text: `path: needs`, `all of (…)`, `any of (…)`, `not (…)`."""
    if isinstance(cond, Leaf):
        return f"{cond.path}: {_needs(cond, ctx, rs)}"
    if isinstance(cond, (All, AnyOf)):
        word = "all" if isinstance(cond, All) else "any"
        return f"{word} of (" + "; ".join(_describe(c, ctx, rs) for c in cond.items) + ")"
    if isinstance(cond, Not):
        return f"not ({_describe(cond.item, ctx, rs)})"
    raise TypeError(f"not a condition: {cond!r}")


def _needs(leaf: Leaf, ctx: dict, rs: Ruleset) -> str:
    """What a leaf requires of its path: `true`, `<= 4`, `one of CA, OR`, `> expr (value)`."""
    if leaf.op == EXISTS:
        return "a value"
    if leaf.op == MISSING:
        return "no value"
    if leaf.op in (IN, NOT_IN):
        listed = ", ".join(_text(v) for v in leaf.value)
        if leaf.constant is not None:
            listed = f"{leaf.constant} ({listed})"
        return ("one of " if leaf.op == IN else "none of ") + listed
    shown = _operand_text(leaf, ctx, rs)
    if leaf.op == EQ:
        return shown
    if leaf.op == NE:
        return f"not {shown}"
    return f"{_SYMBOLS[leaf.op]} {shown}"


def _operand_text(leaf: Leaf, ctx: dict, rs: Ruleset) -> str:
    """A literal as written; an expression as written with its value in this context."""
    if not leaf.is_expr:
        return _text(leaf.value)
    written = ex.to_text(leaf.value)
    value = operand(leaf, ctx, rs)
    if value is not None:
        return written if value == _literal(leaf.value) else f"{written} ({_text(value)})"
    return f"{written} (cannot be computed: {_undefined(leaf.value, ctx, rs)})"


def _literal(node: Any) -> Any:
    """A bare number's value (shown once, not as `4 (4)`); None for anything else."""
    return node.value if isinstance(node, ex.Num) else None


def _undefined(node: Any, ctx: dict, rs: Ruleset) -> str:
    """Why an expression has no value here."""
    for lookup in ex.lookups(node):
        key = ctx.get(lookup.key)
        if key is not None and key not in rs.tables[lookup.table]:
            return f"{lookup.table} has no entry for {lookup.key} {_text(key)}"
    try:
        ex.evaluate(node, getter(ctx, rs), rs.tables)
    except ex.Undefined as exc:
        reason = str(exc)
        return reason if reason == "date out of range" else f"{reason} is absent"
    return "no value"  # pragma: no cover - operand() found none


# ------------------------------------------------------------------ values


def _json(value: Any) -> Any:
    """A context value as JSON: text for a Decimal (exact) or a date; else itself."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _text(value: Any) -> str:
    """A value in a message: `absent`, `true`/`false`, exact decimal text, ISO date."""
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(_json(value))
