"""The fact paths the search assigns: each path's kind, its representative values
(finite kinds) or bounds (numbers), the order the search splits on them; and the
amounts, computed from the amount facts or written as expressions over them."""

from __future__ import annotations

import datetime
import itertools
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ... import amounts as amounts_mod
from ... import facts as facts_mod
from ...policy import expr as ex
from ...policy.model import EQ, IN, NE, NOT_IN, Choice, Expr, Ruleset
from .piecewise import to_num
from .rules import rule_leaves
from .values import CENT

NUMERIC = ("money", "decimal", "int", "date")
BALANCE, PROCEEDS = "loan.unpaid_balance", "disposition.proceeds"
AMOUNT_INPUTS = (
    BALANCE, PROCEEDS, "loan.accrued_interest", "loan.fees",
    *(f"disposition.costs.{k}" for k in amounts_mod.COST_KEYS), "disposition.credits",
)


class Var:
    """One fact path: finite kinds list their representatives (`reps`, `other` standing
    for every value no rule names); numbers have bounds `lo`..`hi` on a `grid`."""

    __slots__ = ("path", "kind", "order", "reps", "other", "optional", "grid", "lo", "hi")

    def __init__(self, path: str, kind: str, order: int) -> None:
        self.path = path
        self.kind = kind
        self.order = order
        self.reps: list = []
        self.other: Any = None
        self.optional = path in facts_mod.FACT_OPTIONAL
        self.grid = Fraction(1, 100) if kind in ("money", "decimal") else Fraction(1)
        self.lo: Fraction | None = None
        self.hi: Fraction | None = None

    @property
    def finite(self) -> bool:
        return self.kind not in NUMERIC

    def from_num(self, x: Fraction) -> Any:
        if self.kind in ("money", "decimal"):
            return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(CENT)
        if self.kind == "int":
            return int(x)
        return datetime.date.fromordinal(int(x))


def _int_bounds() -> dict[str, tuple]:
    return {f.path: (f.minimum, f.maximum) for f in facts_mod.FIELDS if f.kind == "int"}


def _required_when() -> dict[str, tuple[str, str]]:
    return {f.path: f.required_when for f in facts_mod.FIELDS if f.required_when}


class Domain:
    """The variables of one ruleset's search (`vars`, split `order`), the amount facts
    it assigns (`amount_vars`) and those it holds at 0 (`fixed`)."""

    def __init__(self, rs: Ruleset) -> None:
        self.rs = rs
        self._class_cache: dict[str, str] = {}
        self._setup_vars()

    def path_class(self, path: str) -> str:
        """The kind of a path: "fact", "amount" or "output" (of an earlier stage)."""
        cls = self._class_cache.get(path)
        if cls is None:
            if path in facts_mod.FACT_FIELDS:
                cls = "fact"
            elif path.startswith("amounts."):
                cls = "amount"
            else:
                cls = "output"
            self._class_cache[path] = cls
        return cls

    def _read_paths(self) -> set[str]:
        """Every path a condition or an output value reads."""
        paths: set[str] = set()

        def tree(node: Any) -> None:
            paths.update(ex.refs(node))

        def value(v: Any) -> None:
            if isinstance(v, Expr):
                tree(v.node)
            elif isinstance(v, Choice):
                value(v.then)
                value(v.otherwise)

        for r in self.rs.rules:
            for leaf in rule_leaves(r):
                paths.add(leaf.path)
                if leaf.is_expr:
                    tree(leaf.value)
            for o in r.outputs:
                value(o.value)
        return paths

    def _setup_vars(self) -> None:
        rs = self.rs
        reads = self._read_paths()
        # Amount facts: the balance and the proceeds always; the others only when a
        # rule reads them (or the amount they alone make up); else held at 0.
        branch = {BALANCE, PROCEEDS} | (reads & set(AMOUNT_INPUTS))
        cost_paths = [f"disposition.costs.{k}" for k in amounts_mod.COST_KEYS]
        if "amounts.costs" in reads and not branch & set(cost_paths):
            branch.add("disposition.costs.legal")
        if "amounts.credits" in reads:
            branch.add("disposition.credits")
        self.amount_vars = [p for p in AMOUNT_INPUTS if p in branch]
        self.fixed = {p: Decimal("0.00") for p in AMOUNT_INPUTS if p not in branch}

        mentioned: dict[str, set] = {}
        for r in rs.rules:
            for leaf in rule_leaves(r):
                if leaf.op in (IN, NOT_IN):
                    mentioned.setdefault(leaf.path, set()).update(leaf.value)
                elif leaf.op in (EQ, NE) and not leaf.is_expr:
                    mentioned.setdefault(leaf.path, set()).add(leaf.value)
        for node in self._all_trees():
            for lk in ex.lookups(node):
                mentioned.setdefault(lk.key, set()).update(rs.tables.get(lk.table, {}))

        table_order = list(facts_mod.FACT_FIELDS)
        bounds = _int_bounds()
        self.vars: dict[str, Var] = {}
        numeric_rank = {p: i for i, p in enumerate(self.amount_vars)}
        for i, path in enumerate(table_order):
            kind = facts_mod.FACT_FIELDS[path]
            if kind == "jurisdiction" or kind == "enum":
                kind = "enum"
            if kind in NUMERIC:
                if path in numeric_rank:
                    order = 1000 + numeric_rank[path]
                elif kind == "date":
                    order = 2000 + (500 if path == "as_of" else i)
                else:
                    order = 3000 + i
            else:
                order = i
            var = Var(path, kind, order)
            if kind == "enum":
                allowed = facts_mod.FACT_ENUMS[path]
                named = [v for v in allowed if v in mentioned.get(path, ())]
                unnamed = [v for v in allowed if v not in mentioned.get(path, ())]
                default = facts_mod.FACT_DEFAULTS.get(path)
                # One unnamed value stands for all of them: the default when it is one.
                var.other = default if default in unnamed else next(iter(unnamed), None)
                reps = named + ([var.other] if var.other is not None else [])
                first = default if default in reps else var.other
                var.reps = sorted(reps, key=lambda v: v != first)  # typical examples first
            elif kind == "bool":
                var.reps = [True, False]
                if facts_mod.FACT_DEFAULTS.get(path) is False:
                    var.reps = [False, True]
            elif kind == "string":
                named = sorted(v for v in mentioned.get(path, ()) if isinstance(v, str))
                other = next(f"CHECK-{n}" for n in itertools.count(1)
                             if f"CHECK-{n}" not in named)
                var.reps = named + [other]
                var.other = other
            else:
                if kind in ("money", "decimal"):
                    var.lo, var.hi = Fraction(0), Fraction(facts_mod.MAX_MONEY)
                elif kind == "int":
                    lo, hi = bounds.get(path, (None, None))
                    var.lo = Fraction(lo if lo is not None else -(2**63))
                    var.hi = Fraction(hi if hi is not None else 2**63 - 1)
                else:
                    var.lo = to_num(facts_mod.MIN_DATE)
                    var.hi = to_num(facts_mod.MAX_DATE)
            if var.optional and var.finite:
                var.reps = [*var.reps, None]
            self.vars[path] = var
        self.order = {p: v.order for p, v in self.vars.items()}
        self.required_when = _required_when()

    def _all_trees(self):
        for r in self.rs.rules:
            for leaf in rule_leaves(r):
                if leaf.is_expr:
                    yield leaf.value
            stack = [o.value for o in r.outputs]
            while stack:
                v = stack.pop()
                if isinstance(v, Expr):
                    yield v.node
                elif isinstance(v, Choice):
                    stack += [v.then, v.otherwise]

    def min_need(self, a: str | None, b: str | None) -> str | None:
        """Of two paths to split on, the one to split on first."""
        if a is None:
            return b
        if b is None:
            return a
        # An earlier stage's output (assumed, split on its few values) after the enum
        # facts and before the numbers.
        return a if self.order.get(a, 500) <= self.order.get(b, 500) else b

    def must_exist(self, path: str, sigma: dict) -> bool:
        """Whether an optional path is required by the assigned ones."""
        cond = self.required_when.get(path)
        return bool(cond) and sigma.get(cond[0]) == cond[1]

    # -- amounts ---------------------------------------------------------------
    def compute_amounts(self, sigma: dict) -> Any:
        """dict of `amounts.*` values, or the name of an amount fact still to assign."""
        need = None
        for p in self.amount_vars:
            if p not in sigma:
                need = self.min_need(need, p)
        if need is not None:
            return need
        values = {**self.fixed, **{p: sigma[p] for p in self.amount_vars}}
        nested: dict = {"loan": {}, "disposition": {"costs": {}}}
        for p, v in values.items():
            parts = p.split(".")
            target = nested
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = v
        amounts = amounts_mod.compute_amounts(nested)
        return {f"amounts.{k}": v for k, v in amounts.items()}

    def amount_tree(self, name: str) -> Any:
        """The amount `name` (debt, costs, ... deficiency) as an expression over facts."""
        def ref(p: str) -> Any:
            return ex.Ref(p) if p not in self.fixed else None

        def add(*terms: tuple[int, Any]) -> Any:
            node = None
            for sign, t in terms:
                if t is None:
                    continue
                if node is None:
                    node = t if sign > 0 else ex.Neg(t)
                else:
                    node = ex.BinOp("+" if sign > 0 else "-", node, t)
            return node if node is not None else ex.Num(Decimal(0))

        debt = add((1, ref(BALANCE)), (1, ref("loan.accrued_interest")), (1, ref("loan.fees")))
        costs = add(*((1, ref(f"disposition.costs.{k}")) for k in amounts_mod.COST_KEYS))
        credits = add((1, ref("disposition.credits")))
        claim = add((1, debt), (1, costs), (-1, credits))
        proceeds = ex.Ref(PROCEEDS)
        zero = ex.Num(Decimal(0))
        return {
            "debt": debt, "costs": costs, "credits": credits, "claim": claim,
            "proceeds": proceeds,
            "deficiency": ex.Call("max", (ex.BinOp("-", claim, proceeds), zero)),
            "surplus": ex.Call("max", (ex.BinOp("-", proceeds, claim), zero)),
        }[name]
