"""Conditions -> durable-rules ruleset definitions (the engine's JSON/dict form).

What the engine sees (ENGINE-NOTES):
- one flat fact per stage: `stage_` marker + the paths that stage's rules read,
  keys with `.` replaced by `__`; money and decimals as integer cents, dates as
  day ordinals, ints, booleans and strings as they are - never floats or
  Decimals, never unvalidated text;
- every rule ANDs the stage marker (a positive test, so a `$nex` never stands
  alone) and guards arithmetic operands with `$ex`;
- `not` is pushed down to the leaves, where "absent" is spelled out
  (`not x == 1` is `x != 1 or x absent`), so the engine agrees with the
  reference semantics on missing values;
- `in` becomes an `$or` of equalities (the engine has no `$in`); a table
  lookup `t[key]` is carried in the fact as its own field, looked up when the
  fact is built (see `stage_lookups`).
"""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from ..policy import expr as ex
from ..policy.model import (
    EQ, EXISTS, GT, GTE, IN, LT, LTE, MISSING, NE, NOT_IN, All, AnyOf, Leaf, Not, Ruleset,
    walk_leaves,
)

STAGE_KEY = "stage_"
_OP = {EQ: "$eq", NE: "$neq", LT: "$lt", LTE: "$lte", GT: "$gt", GTE: "$gte"}
_NEGATE = {EQ: NE, NE: EQ, LT: GTE, LTE: GT, GT: LTE, GTE: LT}
AMOUNT_KINDS = ("money", "decimal")


def key(path: str) -> str:
    return path.replace(".", "__")


def encode(value: Any, kind: str) -> Any:
    """A validated Python value as the engine compares it."""
    if kind in AMOUNT_KINDS and isinstance(value, Decimal):
        return int(value * 100)
    if isinstance(value, datetime.date):
        return value.toordinal()
    if isinstance(value, Decimal):
        return int(value)
    return value


class Compiler:
    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs

    def stage_paths(self, stage: str) -> tuple[str, ...]:
        """Every path the stage's conditions read: what its engine fact must carry."""
        seen: dict[str, None] = {}
        for rule in self.rs.stage_rules(stage):
            for leaf in walk_leaves(rule.when):
                seen[leaf.path] = None
                if leaf.is_expr:
                    for name in ex.refs(leaf.value):
                        if self.rs.constant(name) is None:
                            seen[name] = None
        return tuple(seen)

    def stage_lookups(self, stage: str) -> dict[str, tuple[str, str, int]]:
        """Table lookups the stage's conditions use, as engine fields:
        field -> (table, key path, scale). The engine cannot index a table, and
        expanding `t[key]` into an `$or` over the keys overflows its limit of 32
        expressions per condition, so the fact carries the looked-up entry."""
        out: dict[str, tuple[str, str, int]] = {}
        for rule in self.rs.stage_rules(stage):
            for leaf in walk_leaves(rule.when):
                if leaf.is_expr:
                    for lk in ex.lookups(leaf.value):
                        scale = 100 if leaf.kind in AMOUNT_KINDS else 1
                        out[lookup_field(lk, scale)] = (lk.table, lk.key, scale)
        return out

    def rule_condition(self, stage: str, when: Any) -> dict:
        return {"$and": [{STAGE_KEY: stage}, self.cond(when, False)]}

    # -- boolean structure --------------------------------------------------
    def cond(self, node: Any, neg: bool) -> dict:
        if isinstance(node, Leaf):
            return self.leaf(node, neg)
        if isinstance(node, Not):
            return self.cond(node.item, not neg)
        if isinstance(node, (All, AnyOf)):
            items = [self.cond(c, neg) for c in node.items]
            conj = isinstance(node, All) != neg  # De Morgan
            return _join("$and" if conj else "$or", items)
        raise TypeError(node)

    # -- leaves -----------------------------------------------------------------
    def leaf(self, leaf: Leaf, neg: bool) -> dict:
        k = key(leaf.path)
        absent = {"$nex": {k: 1}}
        present = {"$ex": {k: 1}}
        if leaf.op in (EXISTS, MISSING):
            return present if (leaf.op == EXISTS) != neg else absent
        if leaf.op in (IN, NOT_IN):
            vals = [encode(v, leaf.kind) for v in leaf.value]
            if (leaf.op == IN) != neg:
                test = _join("$or", [{k: v} for v in vals])
            else:
                test = _join("$and", [{"$neq": {k: v}} for v in vals])
            return _join("$or", [test, absent]) if neg else test
        return self._compare(leaf, leaf.op, leaf.value, neg)

    def _compare(self, leaf: Leaf, op: str, value: Any, neg: bool) -> dict:
        k = key(leaf.path)
        if neg:
            op = _NEGATE[op]
        refs: list[str] = []
        if leaf.is_expr:
            scale = 100 if leaf.kind in AMOUNT_KINDS else 1
            for lk in ex.lookups(value):
                value = _substitute(value, lk, ex.Ref(lookup_field(lk, scale)))
            refs = [n for n in ex.refs(value) if self.rs.constant(n) is None]
            operand = self._operand(value, leaf.kind)
        else:
            operand = encode(value, leaf.kind)
        if op == EQ:
            test = {k: operand}
        else:
            test = {_OP[op]: {k: operand}}
        guards = [{"$ex": {key(p): 1}} for p in dict.fromkeys([leaf.path, *refs])]
        if not neg:
            return _join("$and", [*guards, test]) if refs else test
        # not (all present and cmp) == any absent or (all present and negated cmp)
        absent = [{"$nex": {key(p): 1}} for p in dict.fromkeys([leaf.path, *refs])]
        return _join("$or", [*absent, _join("$and", [*guards, test]) if refs else test])

    def _operand(self, node: Any, kind: str) -> Any:
        """An expression as an engine operand, in the leaf's units."""
        scale = 100 if kind in AMOUNT_KINDS else 1
        if isinstance(node, ex.Num):
            return _int(node.value * scale)
        if isinstance(node, ex.Ref):
            const = self.rs.constant(node.name)
            if const is None:
                return {"$m": key(node.name)}
            if isinstance(const, datetime.date):
                return const.toordinal()
            return _int(const * scale)
        if isinstance(node, ex.BinOp):
            op = "$add" if node.op == "+" else "$sub"
            return {op: {"$l": self._operand(node.left, kind), "$r": self._operand(node.right, kind)}}
        raise TypeError(f"not a linear operand: {node!r}")


def _int(value: Decimal) -> int:
    if value != value.to_integral_value():
        raise ValueError(f"{value} is not a whole number of engine units")
    return int(value)


def lookup_field(lk: ex.Lookup, scale: int) -> str:
    return f"lookup.{lk.table}.{lk.key}.x{scale}"


def _substitute(node: Any, lookup: ex.Lookup, replacement: Any) -> Any:
    if node == lookup:
        return replacement
    if isinstance(node, ex.BinOp):
        return ex.BinOp(node.op, _substitute(node.left, lookup, replacement),
                        _substitute(node.right, lookup, replacement), node.column)
    return node


def _join(op: str, items: list[dict]) -> dict:
    if len(items) == 1:
        return items[0]
    return {op: items}
