"""Three-valued evaluation over a partial assignment: a condition is true, false or
unknown, and "unknown" names the path to split on next; an output value is a value,
an error (the rule fails), unknown, a set of possible values or a numeric range."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ... import facts as facts_mod
from ...policy import expr as ex
from ...policy.model import (
    EQ,
    EXISTS,
    IN,
    MISSING,
    NE,
    NOT_IN,
    All,
    AnyOf,
    Choice,
    Expr,
    Leaf,
    Literal,
    Not,
    Ruleset,
)
from ...policy.schema import OUTPUT_FIELDS
from .domain import Domain
from .piecewise import to_num
from .values import ANY, CENT, COMPARE, Range, union

if TYPE_CHECKING:
    from .stages import View


class _Need:
    """An unknown result of an expression: split on `var` to learn more."""

    __slots__ = ("var",)

    def __init__(self, var: str) -> None:
        self.var = var


class _NeedExc(Exception):
    def __init__(self, var: str) -> None:
        self.var = var


class _GiveUp(Exception):
    pass


class Conditions:
    """The conditions and output values of one ruleset, evaluated on a stage's view."""

    def __init__(self, rs: Ruleset, domain: Domain) -> None:
        self.rs = rs
        self.domain = domain
        self._cond_cache: dict[int, Any] = {}

    # -- three-valued conditions -----------------------------------------------
    def cond(self, cond: Any) -> Any:
        """The condition as fn(view) -> True | False | path to split on."""
        fn = self._cond_cache.get(id(cond))
        if fn is None:
            fn = self._compile(cond)
            self._cond_cache[id(cond)] = fn
        return fn

    def _compile(self, cond: Any) -> Any:
        if isinstance(cond, Leaf):
            return self._compile_leaf(cond)
        if isinstance(cond, (All, AnyOf)):
            fns = [self._compile(c) for c in cond.items]
            stop, done = (False, True) if isinstance(cond, All) else (True, False)
            min_need = self.domain.min_need

            def junction(view: View) -> Any:
                need = None
                for f in fns:
                    r = f(view)
                    if r is stop:
                        return stop
                    if r is not done:
                        need = min_need(need, r)
                return done if need is None else need

            return junction
        if isinstance(cond, Not):
            inner = self._compile(cond.item)

            def negation(view: View) -> Any:
                r = inner(view)
                if r is True:
                    return False
                if r is False:
                    return True
                return r

            return negation
        raise TypeError(f"not a condition: {cond!r}")

    def _compile_leaf(self, leaf: Leaf) -> Any:
        path, op = leaf.path, leaf.op
        members = frozenset(leaf.value) if op in (IN, NOT_IN) else None
        is_expr = leaf.is_expr
        literal = leaf.value
        compare = COMPARE.get(op)
        expr3 = self.expr3
        min_need = self.domain.min_need
        domain = self._domain_test(leaf)

        def test(v: Any, other: Any) -> bool:
            if op == MISSING:
                return v is None
            if v is None:
                return False
            if op == EXISTS:
                return True
            if op == IN:
                return v in members
            if op == NOT_IN:
                return v not in members
            if other is None:
                return False
            return compare(v, other)

        def leaf_fn(view: View) -> Any:
            found = view.lookup(path)
            tag = found[0]
            other: Any = literal
            if is_expr and op not in (EXISTS, MISSING):
                other = expr3(literal, view)
            if tag == "u":
                if op in (EXISTS, MISSING):
                    return found[1]
                if other is None and compare is not None:
                    return False
                if isinstance(other, _Need):
                    return min_need(found[1], other.var)
                if domain is not None:  # decided by the field's range of values alone?
                    known = domain(other)
                    if known is not None:
                        return known
                return found[1]
            if isinstance(other, _Need):
                if tag == "v" and (found[1] is None or op in (EXISTS, MISSING, IN, NOT_IN)):
                    return test(found[1], None)
                return other.var if tag == "v" else min_need(other.var, found[2])
            if tag == "v":
                return test(found[1], other)
            values = found[1]
            if values is ANY:
                return found[2]
            results = {v.test(op, other) if isinstance(v, Range) else test(v, other)
                       for v in values}
            if len(results) == 1 and None not in results:
                return results.pop()
            return found[2]

        return leaf_fn

    def _domain_test(self, leaf: Leaf) -> Any:
        """For a leaf on a fact: fn(other) -> True/False when every value the fact can
        take (absent included, when optional) decides the test, else None."""
        var = self.domain.vars.get(leaf.path)
        if var is None or leaf.op in (EXISTS, MISSING):
            return None
        op, optional = leaf.op, var.optional
        if not var.finite:
            whole = Range(var.lo, var.hi)

            def numeric(other: Any) -> bool | None:
                result = whole.test(op, other)
                return None if result is True and optional else result

            return numeric
        if op not in (IN, NOT_IN, EQ, NE) or var.kind == "string":
            return None
        allowed = set(facts_mod.FACT_ENUMS.get(var.path, ())) if var.kind == "enum" else {
            True, False}
        listed = set(leaf.value) if op in (IN, NOT_IN) else {leaf.value}
        inside = allowed <= listed
        outside = not (allowed & listed)
        positive = op in (IN, EQ)

        def finite(_other: Any) -> bool | None:
            if inside:
                return None if optional else positive
            if outside:
                return False if positive else (None if optional else True)
            return None

        return finite

    def expr3(self, node: Any, view: View) -> Any:
        """An expression's value, None when undefined (absent input), or a _Need."""
        rs = self.rs

        def get(name: str) -> Any:
            const = rs.constant(name)
            if const is not None:
                return const
            found = view.lookup(name)
            if found[0] == "v":
                return found[1]
            if found[0] == "u":
                raise _NeedExc(found[1])
            values = found[1]
            if values is not ANY and len(values) == 1:
                (value,) = values
                if not isinstance(value, Range):
                    return value
            raise _NeedExc(found[2])

        try:
            return ex.evaluate(node, get, rs.tables)
        except ex.Undefined:
            return None
        except _NeedExc as need:
            return _Need(need.var)

    def value3(self, value: Any, path: str, view: View) -> tuple:
        """An output value: ("v", value) | ("err",) | ("u", need)."""
        if isinstance(value, Literal):
            return ("v", value.value)
        if isinstance(value, Choice):
            c = self.cond(value.when)(view)
            if c is True:
                return self.value3(value.then, path, view)
            if c is False:
                return self.value3(value.otherwise, path, view)
            return ("u", c)
        result = self.expr3(value.node, view)
        if isinstance(result, _Need):
            return ("u", result.var)
        if result is None:
            return ("err",)
        kind = OUTPUT_FIELDS.get(path, ("",))[0] if path in OUTPUT_FIELDS else (
            self.rs.var_kinds.get(path, ""))
        if kind in ("money", "decimal") and isinstance(result, Decimal):
            result = result.quantize(CENT, rounding=ROUND_HALF_UP)
            if result < 0:
                return ("err",)
        return ("v", result)

    def value_set(self, value: Any, path: str, view: View) -> Any:
        if isinstance(value, Choice):
            c = self.cond(value.when)(view)
            if c is True:
                return self.value_set(value.then, path, view)
            if c is False:
                return self.value_set(value.otherwise, path, view)
            return union(self.value_set(value.then, path, view),
                          self.value_set(value.otherwise, path, view))
        r = self.value3(value, path, view)
        if r[0] == "v":
            return frozenset([r[1]])
        if r[0] == "u" and isinstance(value, Expr):
            try:
                lo, hi = self.range3(value.node, view)
            except _GiveUp:
                return ANY
            return frozenset([Range(lo, hi)])
        return ANY

    def range3(self, node: Any, view: View) -> tuple[Fraction, Fraction]:
        """Bounds of a numeric expression whatever the unassigned paths are."""
        if isinstance(node, ex.Num):
            x = Fraction(node.value)
            return x, x
        if isinstance(node, ex.Ref):
            const = self.rs.constant(node.name)
            if const is not None:
                x = to_num(const)
                return x, x
            found = view.lookup(node.name)
            if found[0] == "v":
                if found[1] is None or isinstance(found[1], (bool, str)):
                    raise _GiveUp
                x = to_num(found[1])
                return x, x
            if found[0] == "s":
                return self._hull(found[1])
            cls = self.domain.path_class(node.name)
            if cls == "fact":
                var = self.domain.vars[node.name]
                if var.finite or var.kind == "date":
                    raise _GiveUp
                return var.lo, var.hi
            if cls == "amount":
                top = Fraction(facts_mod.MAX_MONEY) * 3
                return (-top if node.name == "amounts.claim" else Fraction(0)), top
            raise _GiveUp
        if isinstance(node, ex.Neg):
            lo, hi = self.range3(node.operand, view)
            return -hi, -lo
        if isinstance(node, ex.BinOp):
            a, b = self.range3(node.left, view), self.range3(node.right, view)
            if node.op == "+":
                return a[0] + b[0], a[1] + b[1]
            if node.op == "-":
                return a[0] - b[1], a[1] - b[0]
            products = [x * y for x in a for y in b]
            return min(products), max(products)
        if isinstance(node, ex.Call):
            ranges = [self.range3(arg, view) for arg in node.args]
            pick = max if node.func == "max" else min
            return pick(r[0] for r in ranges), pick(r[1] for r in ranges)
        raise _GiveUp

    @staticmethod
    def _hull(values: Any) -> tuple[Fraction, Fraction]:
        if values is ANY or not values:
            raise _GiveUp
        los, his = [], []
        for v in values:
            if isinstance(v, Range):
                los.append(v.lo)
                his.append(v.hi)
            elif v is None or isinstance(v, (bool, str)):
                raise _GiveUp
            else:
                los.append(to_num(v))
                his.append(to_num(v))
        return min(los), max(his)
