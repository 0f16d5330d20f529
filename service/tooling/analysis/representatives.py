"""The representative values of a path when the search splits on it.

Finite kinds: the values rules name, one value standing for the rest, "absent"
when optional. Numbers and dates: the values around the critical points of every
comparison that involves the path (conditions, conditional outputs, earlier
stages' outputs replaced by what can set them, amounts expanded into facts, "an
amount output is not negative"), each a piecewise-linear function of the path with
the assigned paths fixed; see the package docstring.
"""

from __future__ import annotations

import datetime
import itertools
import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ...policy import expr as ex
from ...policy.model import EXISTS, IN, MISSING, NOT_IN, Choice, Expr, Literal, Ruleset, walk_leaves
from ...policy.schema import OUTPUT_DEFAULTS, OUTPUT_FIELDS
from .domain import NUMERIC, Domain, Var
from .limits import MAX_ALTERNATIVES, MAX_SUBSTITUTIONS
from .piecewise import pl_add, pl_const, pl_minmax, pl_roots, pl_scale, pl_var, to_num
from .rules import rule_leaves

_TYPICAL = {
    "money": Decimal("1000.00"), "decimal": Decimal("0.00"),
    "date": datetime.date(2025, 6, 30),
}
#: Added to twice the largest critical point for "a value well above all of them".
_FAR = {"money": Fraction(1000), "decimal": Fraction(100), "int": Fraction(10),
        "date": Fraction(365)}


@dataclass(frozen=True)
class _Const:
    """A literal value (number, date) inside an expanded expression tree."""

    value: Any


class _Unresolved(Exception):
    """A piecewise-linear evaluation met a path that is not assigned."""


class _Absent(Exception):
    """A piecewise-linear evaluation met an absent value (the comparison is false)."""


class Representatives:
    """Every numeric comparison of a ruleset (`atoms`, as `lhs - rhs` over fact paths),
    those in scope for the current question, and the candidate values of a path."""

    def __init__(self, rs: Ruleset, domain: Domain, stage_index: dict[str, int]) -> None:
        self.rs = rs
        self.domain = domain
        self.stage_index = stage_index
        self._cand_cache: dict[tuple, list] = {}
        self._base_cache: dict[tuple, list] = {}
        self._setup_atoms()

    def _setup_atoms(self) -> None:
        """Every numeric comparison, as `lhs - rhs` over fact paths (outputs expanded)."""
        self.atoms: list[tuple[Any, frozenset, int, bool]] = []
        seen: set[tuple] = set()

        def add(diff: Any, k: int, is_value: bool) -> None:
            key = (repr(diff), k, is_value)
            if key in seen:
                return
            seen.add(key)
            refs = {n for n in ex.refs(diff) if self.domain.path_class(n) == "fact"}
            self.atoms.append((diff, frozenset(refs), k, is_value))

        for r in self.rs.rules:
            k = self.stage_index[r.stage]
            in_when = {id(leaf) for leaf in walk_leaves(r.when)}
            for leaf in rule_leaves(r):
                is_value = id(leaf) not in in_when  # the `if` of a conditional output
                if leaf.kind not in NUMERIC or leaf.op in (EXISTS, MISSING):
                    continue
                lhs = self._expand(ex.Ref(leaf.path), k)
                if leaf.op in (IN, NOT_IN):
                    rhs = [_Const(v) for v in leaf.value]
                elif leaf.is_expr:
                    rhs = self._expand(leaf.value, k)
                else:
                    rhs = [_Const(leaf.value)]
                for a, b in itertools.islice(itertools.product(lhs, rhs), MAX_ALTERNATIVES):
                    add(ex.BinOp("-", a, b), k, is_value)
            for o in r.outputs:
                kind = OUTPUT_FIELDS.get(o.path, ("",))[0]
                if kind in ("money", "decimal"):
                    for tree in self._value_trees(o.value, k):
                        if not isinstance(tree, _Const):
                            add(tree, k, True)  # a negative amount is an error: a threshold
        self._scoped: dict[tuple, dict[str, list]] = {}
        self.set_scope(len(self.rs.stages), True)

    def set_scope(self, k: int, values: bool) -> None:
        """The comparisons a question at stage k depends on: the conditions of stage k
        (and its output values when `values`), and everything of the earlier stages."""
        self.scope = (k, values)
        by_var = self._scoped.get(self.scope)
        if by_var is None:
            by_var = {}
            for atom in self.atoms:
                _diff, refs, j, is_value = atom
                if j < k or (j == k and (values or not is_value)):
                    for p in refs:
                        by_var.setdefault(p, []).append(atom)
            self._scoped[self.scope] = by_var
        self.atoms_by_var = by_var

    def _value_trees(self, value: Any, k: int) -> list:
        if isinstance(value, Literal):
            v = value.value
            ok = isinstance(v, (Decimal, int, datetime.date)) and not isinstance(v, bool)
            return [_Const(v)] if ok else []
        if isinstance(value, Choice):
            return self._value_trees(value.then, k) + self._value_trees(value.otherwise, k)
        if isinstance(value, Expr):
            return self._expand(value.node, k)
        return []

    def _output_trees(self, path: str, k: int) -> list:
        """What an output read in stage k can be: every earlier rule's value for it."""
        trees: list = []
        for r in self.rs.rules:
            j = self.stage_index[r.stage]
            if j >= k:
                continue
            for o in r.outputs:
                if o.path == path:
                    trees += self._value_trees(o.value, j)
        default = OUTPUT_DEFAULTS.get(path)
        if default is not None:
            trees.append(_Const(default))
        if path in ("outcome.borrower_owes", "outcome.lender_absorbs"):
            # Settling the outcome: a missing side is the deficiency less the other; a
            # review owes the deficiency and absorbs nothing.
            deficiency = self.domain.amount_tree("deficiency")
            other = ("outcome.lender_absorbs" if path == "outcome.borrower_owes"
                     else "outcome.borrower_owes")
            trees += [deficiency, _Const(Decimal(0))]
            for r in self.rs.rules:
                if self.stage_index[r.stage] < k:
                    for o in r.outputs:
                        if o.path == other:
                            for t in self._value_trees(o.value, self.stage_index[r.stage]):
                                trees.append(ex.BinOp("-", deficiency, t))
        return trees

    def _expand(self, node: Any, k: int) -> list:
        """An expression with amounts and outputs replaced by fact-level alternatives."""
        if isinstance(node, ex.Ref):
            name = node.name
            if self.rs.constant(name) is not None:
                return [node]
            cls = self.domain.path_class(name)
            if cls == "fact":
                return [node]
            if cls == "amount":
                return [self.domain.amount_tree(name[len("amounts."):])]
            return self._output_trees(name, k)[:MAX_ALTERNATIVES]
        if isinstance(node, ex.Neg):
            return [ex.Neg(a) for a in self._expand(node.operand, k)]
        if isinstance(node, ex.BinOp):
            pairs = itertools.product(self._expand(node.left, k), self._expand(node.right, k))
            return [ex.BinOp(node.op, a, b)
                    for a, b in itertools.islice(pairs, MAX_ALTERNATIVES)]
        if isinstance(node, ex.Call):
            combos = itertools.product(*(self._expand(a, k) for a in node.args))
            return [ex.Call(node.func, tuple(c))
                    for c in itertools.islice(combos, MAX_ALTERNATIVES)]
        return [node]

    def _pl(self, node: Any, x: str, env: dict) -> list:
        """`node` as a piecewise-linear function of path x, the other paths from env."""
        if isinstance(node, ex.Num):
            return pl_const(Fraction(node.value))
        if isinstance(node, _Const):
            return pl_const(to_num(node.value))
        if isinstance(node, ex.Ref):
            if node.name == x:
                return pl_var()
            const = self.rs.constant(node.name)
            if const is not None:
                return pl_const(to_num(const))
            if node.name not in env:
                raise _Unresolved(node.name)
            value = env[node.name]
            if value is None:
                raise _Absent
            return pl_const(to_num(value))
        if isinstance(node, ex.Lookup):
            if node.key not in env:
                raise _Unresolved(node.key)
            value = self.rs.tables.get(node.table, {}).get(env[node.key])
            if value is None:
                raise _Absent
            return pl_const(to_num(value))
        if isinstance(node, ex.Neg):
            return pl_scale(self._pl(node.operand, x, env), Fraction(-1))
        if isinstance(node, ex.BinOp):
            left, right = self._pl(node.left, x, env), self._pl(node.right, x, env)
            if node.op == "+":
                return pl_add(left, right)
            if node.op == "-":
                return pl_add(left, right, -1)
            if len(left) == 1 and left[0][1] == 0:
                return pl_scale(right, left[0][2])
            if len(right) == 1 and right[0][1] == 0:
                return pl_scale(left, right[0][2])
            raise _Unresolved("*")
        if isinstance(node, ex.Call):
            parts = [self._pl(a, x, env) for a in node.args]
            acc = parts[0]
            for p in parts[1:]:
                acc = pl_minmax(acc, p, node.func == "max")
            return acc
        raise _Unresolved(repr(node))

    def _critical(self, var: Var, atoms: list, sigma: dict,
                  substitute: bool) -> tuple[set, bool]:
        """Critical points (Fractions) of `var` in the atoms, the assigned paths fixed;
        and whether some were anticipated (other numbers still unassigned)."""
        points: set[Fraction] = set()
        anticipated = False
        for diff, refs, _k, _v in atoms:
            others = [p for p in refs if p != var.path and p not in sigma]
            if others and not substitute:
                continue
            if any(not self.domain.vars[p].finite for p in others):
                anticipated = True
            choices = []
            for p in others:
                ov = self.domain.vars[p]
                if ov.finite:
                    choices.append([v for v in ov.reps if v is not None])
                else:
                    choices.append(self._base(ov))
            if any(not c for c in choices):
                continue
            for combo in itertools.islice(itertools.product(*choices), MAX_SUBSTITUTIONS):
                env = dict(sigma)
                env.update(zip(others, combo, strict=True))
                try:
                    f = self._pl(diff, var.path, env)
                except (_Unresolved, _Absent, ArithmeticError, TypeError, ValueError):
                    continue
                points.update(pl_roots(f))
        return points, anticipated

    def _base(self, var: Var) -> list:
        """A number's own constant critical values (its floor included), for anticipation."""
        cached = self._base_cache.get((var.path, self.scope))
        if cached is not None:
            return cached
        atoms = [a for a in self.atoms_by_var.get(var.path, [])
                 if all(self.domain.vars[p].finite or p == var.path for p in a[1])]
        points, _ = self._critical(var, atoms, dict(self.domain.fixed), substitute=True)
        values = set()
        for c in points:
            for g in (math.floor(c / var.grid), math.ceil(c / var.grid)):
                x = g * var.grid
                if var.lo <= x <= var.hi:
                    values.add(x)
        if var.kind != "date":
            values.add(var.lo)
        out = [var.from_num(x) for x in sorted(values)]
        self._base_cache[(var.path, self.scope)] = out
        return out

    def candidates(self, var: Var, sigma: dict) -> list:
        """Representative values of a path, given the assigned ones."""
        if var.finite:
            reps = var.reps
            if var.optional and self.domain.must_exist(var.path, sigma):
                reps = [v for v in reps if v is not None]
            return reps
        atoms = self.atoms_by_var.get(var.path, [])
        relevant = sorted({p for a in atoms for p in a[1] if p != var.path})
        key = (var.path, self.scope, tuple((p, sigma.get(p, "\0unset")) for p in relevant))
        cached = self._cand_cache.get(key)
        if cached is None:
            points, anticipated = self._critical(var, atoms, sigma, substitute=True)
            values: set[Fraction] = set()
            for c in points:
                lo_g, hi_g = math.floor(c / var.grid), math.ceil(c / var.grid)
                for g in {lo_g - 1, lo_g, hi_g, hi_g + 1}:
                    values.add(g * var.grid)
            if anticipated and points:
                # Later numbers are still to be placed relative to this one: a value
                # inside each cell and one well above, so strict chains have room.
                ordered = sorted(p for p in points if var.lo <= p <= var.hi)
                for a, b in itertools.pairwise(ordered):
                    if b - a > 4 * var.grid:
                        values.add(math.floor((a + b) / 2 / var.grid) * var.grid)
                if ordered:
                    top = ordered[-1]
                    far = top + _FAR[var.kind] + (0 if var.kind == "date" else abs(top))
                    values.add(math.floor(far / var.grid) * var.grid)
            values = {x for x in values if var.lo <= x <= var.hi}
            if not values:
                typical = _TYPICAL.get(var.kind)
                values = {to_num(typical) if typical is not None else var.lo}
            cached = [var.from_num(x) for x in sorted(values)]
            self._cand_cache[key] = cached
        if var.optional and not self.domain.must_exist(var.path, sigma):
            return [*cached, None]
        return cached

