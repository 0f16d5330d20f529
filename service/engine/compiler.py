"""Conditions -> durable-rules ruleset definitions (the engine's JSON/dict form).

What the engine sees (ENGINE-NOTES):
- one flat fact per stage: `stage_` marker + the paths that stage's rules read,
  under short keys (`Compiler.key`); money and decimals as integer cents, dates as
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
import json
from decimal import Decimal
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
    Ruleset,
    walk_leaves,
)

STAGE_KEY = "stage_"
_OP = {EQ: "$eq", NE: "$neq", LT: "$lt", LTE: "$lte", GT: "$gt", GTE: "$gte"}
_NEGATE = {EQ: NE, NE: EQ, LT: GTE, LTE: GT, GT: LTE, GTE: LT}
AMOUNT_KINDS = ("money", "decimal")




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
        self.keys: dict[str, str] = {}

    def key(self, path: str) -> str:
        """The engine's short name for a path: the engine copies the fact into every
        action message, so short keys make each action cheaper."""
        k = self.keys.get(path)
        if k is None:
            k = self.keys[path] = f"k{len(self.keys)}"
        return k

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
        k = self.key(leaf.path)
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
        k = self.key(leaf.path)
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
        test = {k: operand} if op == EQ else {_OP[op]: {k: operand}}
        guards = [{"$ex": {self.key(p): 1}} for p in dict.fromkeys([leaf.path, *refs])]
        if not neg:
            return _join("$and", [*guards, test]) if refs else test
        # not (all present and cmp) == any absent or negated cmp; once every `$nex`
        # has failed all operands are present, so the negated test needs no guard
        # (and the engine allows only 32 expressions per condition: spend few).
        absent = [{"$nex": {self.key(p): 1}} for p in dict.fromkeys([leaf.path, *refs])]
        return _join("$or", [*absent, test])

    def _operand(self, node: Any, kind: str) -> Any:
        """An expression as an engine operand, in the leaf's units."""
        scale = 100 if kind in AMOUNT_KINDS else 1
        if isinstance(node, ex.Num):
            return _int(node.value * scale)
        if isinstance(node, ex.Ref):
            const = self.rs.constant(node.name)
            if const is None:
                return {"$m": self.key(node.name)}
            if isinstance(const, datetime.date):
                return const.toordinal()
            return _int(const * scale)
        if isinstance(node, ex.BinOp):
            op = "$add" if node.op == "+" else "$sub"
            left, right = self._operand(node.left, kind), self._operand(node.right, kind)
            return {op: {"$l": left, "$r": right}}
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


def simultaneous_tests_bound(conditions: list[dict]) -> int:
    """An upper bound on how many distinct engine tests can be true for one fact.

    The engine fails (error 303) when more than 64 are. Equalities on one field
    exclude each other (at most one is true); every other distinct test counts.
    """
    eq_fields: set[str] = set()
    others: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("$and", "$or"):
                    for item in v:
                        walk(item)
                elif k.startswith("$"):
                    others.add(json.dumps(node, sort_keys=True))
                else:
                    eq_fields.add(k)
                    if isinstance(v, dict):
                        others.add(json.dumps(node, sort_keys=True))

    for cond in conditions:
        walk(cond)
    return len(eq_fields) + len(others)
