"""Static analysis of a loaded ruleset: gaps, equal-priority conflicts, shadowed rules.

The questions (for `deficiency check`):

* GAP (error): facts for which no rule of the deciding stage sets
  `outcome.bearer`, so the service answers "review / refer: no rule decided".
* CONFLICT (error): two rules of equal priority in one stage that both match and
  set one scalar output to different values, with no higher-priority rule
  setting that output (so the tie really decides it).
* SHADOWED (warning): a rule without list outputs that never applies, because
  for each scalar output it sets, rules resolved before it (higher priority, or
  equal and earlier in the files) set that output wherever it matches;
  UNREACHABLE (warning) when its condition can never hold at all.

How: a depth-first search over partial assignments of the concrete fact paths,
with three-valued evaluation of the conditions (true / false / unknown, and
"unknown" names the path to split on next). A path gets a finite list of
representative values when it is split:

* enums, booleans, jurisdictions, text: every value a rule names, plus one value
  no rule names (it stands for all of them; the field's default when it is one),
  plus "absent" when optional;
* numbers and dates: the values around the critical points of every comparison
  that involves the path. Each comparison (conditions, conditional outputs,
  outputs of earlier stages replaced by every expression that can set them,
  amounts expanded into facts, "an amount output is not negative") is turned
  into a piecewise-linear function of the path, the assigned paths fixed; its
  breakpoints and roots c give c - 1 unit, c, c + 1 unit (0.01 for money, 1
  for whole numbers and days). Comparisons that still involve unassigned
  numbers are anticipated by substituting those numbers' own constant critical
  values (their floor 0 included), and then a value inside each cell and one
  well above are added, so that numbers placed later have room.

Amounts are computed from the facts once the amount facts are assigned (the
balance first, then the proceeds relative to it); the amount facts no rule
reads individually are held at their default 0. What a later stage reads of an
earlier one is either exact (every rule that could still matter is decided: the
real resolver runs on the partial facts) or a set of possible values, numbers
bounded by intervals (a settled `borrower_owes` is within [0, deficiency]).
When a condition cannot tell from such a set, the search splits on the rule
that decides the deciding stage (`decided_by`: that rule matched, every rule
before it did not, and its outputs are the outcome) or on the output's own few
values; these assumptions are checked against the stages at every step, and a
finding under assumptions counts only once they are confirmed.

Every reported gap and conflict is confirmed by the reference evaluator on one
concrete, validated fact set before it is reported; a shadowing or
unreachability claim is a proof over the representative values (no single fact
set can confirm it). The search is bounded by a node budget per question and a
time budget overall; a question that runs out is reported as an "analysis
incomplete" warning, never as a finding.
"""

from __future__ import annotations

import datetime
import itertools
import math
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from .. import amounts as amounts_mod
from .. import facts as facts_mod
from ..engine.decide import Decider, context
from ..engine.reference import holds
from ..engine.resolver import OutputError, Resolution, json_value, plan_rules, resolve_stage
from . import expr as ex
from .model import (
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
    Choice,
    Expr,
    Leaf,
    Literal,
    Not,
    Rule,
    Ruleset,
    walk_leaves,
)
from .schema import NO_RULE_DECIDED, OUTPUT_DEFAULTS, OUTPUT_FIELDS
from .yamlsafe import Pos

# --------------------------------------------------------------------------- limits

#: Nodes (partial assignments) one question may explore.
NODE_BUDGET = 25_000
#: Seconds the whole analysis may take.
TIME_BUDGET = 10.0
#: Gap regions collected before the gap search stops (the first ones are shown), and
#: seconds spent listing more of them once one is found.
MAX_GAP_REGIONS = 2000
GAP_LISTING_SECONDS = 3.0
GAP_REGIONS_SHOWN = 8
#: Candidate findings the reference evaluator did not confirm before a question gives up.
MAX_UNCONFIRMED = 20
#: Most possible values of an earlier stage's output the search splits on.
MAX_OUTPUT_SPLIT = 12
#: Most rules the search splits on as "the rule that decides the deciding stage".
MAX_WINNER_SPLIT = 64
#: Substitutions tried when anticipating a comparison with unassigned numbers.
MAX_SUBSTITUTIONS = 64
#: Alternatives one comparison expands into (outputs replaced by what sets them).
MAX_ALTERNATIVES = 64

CENT = Decimal("0.01")
_CMP = {
    EQ: lambda a, b: a == b,
    NE: lambda a, b: a != b,
    LT: lambda a, b: a < b,
    LTE: lambda a, b: a <= b,
    GT: lambda a, b: a > b,
    GTE: lambda a, b: a >= b,
}
_NUMERIC = ("money", "decimal", "int", "date")
_BALANCE, _PROCEEDS = "loan.unpaid_balance", "disposition.proceeds"
_AMOUNT_INPUTS = (
    _BALANCE, _PROCEEDS, "loan.accrued_interest", "loan.fees",
    *(f"disposition.costs.{k}" for k in amounts_mod.COST_KEYS), "disposition.credits",
)
_TYPICAL = {
    "money": Decimal("1000.00"), "decimal": Decimal("0.00"),
    "date": datetime.date(2025, 6, 30),
}
_REQUIRED_DEFAULTS = {
    "loan.id": "CHECK-1", _BALANCE: Decimal("10000.00"), _PROCEEDS: Decimal("8000.00"),
    "disposition.date": datetime.date(2025, 6, 30),
}
#: Outputs a review (no rule decided, or the deciding rule failed) overwrites, with the
#: review's value (None: a value that depends on the facts).
_REVIEW_SETS = {"outcome.bearer": "review", "outcome.action": "refer", "outcome.basis": None,
                "outcome.borrower_owes": None, "outcome.lender_absorbs": None}
#: Added to twice the largest critical point for "a value well above all of them".
_FAR = {"money": Fraction(1000), "decimal": Fraction(100), "int": Fraction(10),
        "date": Fraction(365)}
_KIND_FOR_LOAN = {"auto": "vehicle", "mortgage": "dwelling", "other_secured": "other"}


#: A "path to split on" when nothing is left to split on (the question gives up).
_STUCK = "\0nothing to split on"


class _AnySet:
    """Any value at all (an output whose possible values are not enumerable)."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _AnySet()


class _Need:
    """An unknown result of an expression: split on `var` to learn more."""

    __slots__ = ("var",)

    def __init__(self, var: str) -> None:
        self.var = var


class _NeedExc(Exception):
    def __init__(self, var: str) -> None:
        self.var = var


class _Unresolved(Exception):
    """A piecewise-linear evaluation met a path that is not assigned."""


class _Absent(Exception):
    """A piecewise-linear evaluation met an absent value (the comparison is false)."""


class _Budget(Exception):
    pass


@dataclass(frozen=True)
class _Const:
    """A literal value (number, date) inside an expanded expression tree."""

    value: Any


@dataclass(frozen=True)
class _Range:
    """Some number from lo to hi (Fractions; dates as day numbers): a bound on an output."""

    lo: Fraction
    hi: Fraction

    def test(self, op: str, other: Any) -> bool | None:
        """The comparison for every value of the range: True, False or None (it depends)."""
        if op == EXISTS:
            return True
        if op == MISSING or other is None:
            return False
        if op not in _CMP:
            return None
        try:
            x = _to_num(other)
        except (TypeError, ValueError):
            return None
        at_lo, at_hi = _CMP[op](self.lo, x), _CMP[op](self.hi, x)
        if op in (EQ, NE):
            if self.lo == self.hi:
                return at_lo
            inside = self.lo <= x <= self.hi
            return None if inside else op == NE
        return at_lo if at_lo == at_hi else None


class _GiveUp(Exception):
    pass


@dataclass
class Finding:
    kind: str  # gap | conflict | shadowed | unreachable | incomplete
    severity: str  # error | warning
    stage: str
    message: str
    rules: list[str] = field(default_factory=list)
    pos: Pos | None = None
    regions: list[dict] = field(default_factory=list)
    example: dict | None = None
    details: list[str] = field(default_factory=list)
    truncated: bool = False

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "severity": self.severity, "stage": self.stage,
            "message": self.message, "rules": list(self.rules),
            "file": self.pos.file if self.pos else None,
            "line": self.pos.line if self.pos else None,
            "column": self.pos.column if self.pos else None,
            "regions": self.regions, "regions_truncated": self.truncated,
            "example": self.example,
        }


# --------------------------------------------------------------------------- numbers


def _to_num(value: Any) -> Fraction:
    if isinstance(value, datetime.date):
        return Fraction(value.toordinal())
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return Fraction(value)


def _pl_const(c: Fraction) -> list:
    return [(None, Fraction(0), c)]


def _pl_var() -> list:
    return [(None, Fraction(1), Fraction(0))]


def _piece_at(f: list, x: Fraction | None) -> tuple:
    piece = f[0]
    if x is None:
        return piece
    for p in f:
        if p[0] is None or p[0] <= x:
            piece = p
        else:
            break
    return piece


def _pl_merge(f: list, g: list) -> list:
    starts = sorted({p[0] for p in f if p[0] is not None} | {p[0] for p in g if p[0] is not None})
    out = []
    for s in [None, *starts]:
        pf, pg = _piece_at(f, s), _piece_at(g, s)
        out.append((s, pf[1], pf[2], pg[1], pg[2]))
    return out


def _pl_add(f: list, g: list, sign: int = 1) -> list:
    return [(s, a1 + sign * a2, b1 + sign * b2) for s, a1, b1, a2, b2 in _pl_merge(f, g)]


def _pl_scale(f: list, k: Fraction) -> list:
    return [(s, a * k, b * k) for s, a, b in f]


def _inside(lo: Fraction | None, hi: Fraction | None) -> Fraction:
    if lo is None and hi is None:
        return Fraction(0)
    if lo is None:
        return hi - 1
    if hi is None:
        return lo + 1
    return (lo + hi) / 2


def _pl_minmax(f: list, g: list, is_max: bool) -> list:
    merged = _pl_merge(f, g)
    out = []
    for i, (s, a1, b1, a2, b2) in enumerate(merged):
        e = merged[i + 1][0] if i + 1 < len(merged) else None
        cuts = [s]
        if a1 != a2:
            xc = (b2 - b1) / (a1 - a2)
            if (s is None or xc > s) and (e is None or xc < e):
                cuts.append(xc)
        for j, c in enumerate(cuts):
            ce = cuts[j + 1] if j + 1 < len(cuts) else e
            x = _inside(c, ce)
            first = (a1 * x + b1 >= a2 * x + b2) == is_max
            out.append((c, a1, b1) if first else (c, a2, b2))
    return out


def _pl_roots(f: list) -> list[Fraction]:
    points = [p[0] for p in f if p[0] is not None]
    for i, (s, a, b) in enumerate(f):
        if a == 0:
            continue
        e = f[i + 1][0] if i + 1 < len(f) else None
        r = -b / a
        if (s is None or r >= s) and (e is None or r < e):
            points.append(r)
    return points


# --------------------------------------------------------------------------- variables


class _Var:
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
        return self.kind not in _NUMERIC

    def from_num(self, x: Fraction) -> Any:
        if self.kind in ("money", "decimal"):
            return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(CENT)
        if self.kind == "int":
            return int(x)
        return datetime.date.fromordinal(int(x))


def _int_bounds() -> dict[str, tuple]:
    table = getattr(facts_mod, "_TABLE", ())
    return {f.path: (f.low, f.high) for f in table if getattr(f, "kind", "") == "int"}


def _required_when() -> dict[str, tuple[str, str]]:
    table = getattr(facts_mod, "_TABLE", ())
    return {f.path: f.required_when for f in table if getattr(f, "required_when", None)}


# --------------------------------------------------------------------------- search state


class _Node:
    """One partial assignment, with its amounts and stage views computed on demand."""

    __slots__ = ("an", "sigma", "_amounts", "_views", "pending")

    def __init__(self, an: Analyzer, sigma: dict) -> None:
        self.an = an
        self.sigma = sigma  # fact path -> value; an output path -> an assumed value
        self._amounts: Any = None
        self._views: dict[int, _View] = {}
        self.pending: dict[str, Any] = {}  # output path -> possible values, to split on

    @property
    def amounts(self) -> Any:
        """dict of `amounts.*` values, or the name of an amount fact still to assign."""
        if self._amounts is None:
            self._amounts = self.an.compute_amounts(self.sigma)
        return self._amounts

    def view(self, k: int) -> _View:
        """What the rules of stage k see: facts, amounts, outputs of stages before k."""
        v = self._views.get(k)
        if v is None:
            v = self.an.build_view(self, k)
            self._views[k] = v
        return v


class _View:
    __slots__ = ("node", "exact", "ctx", "sets", "need", "parent", "needs", "inconsistent")

    def __init__(self, node: _Node, exact: bool, ctx: dict | None, sets: dict | None,
                 need: str | None, parent: _View | None, needs: dict | None = None) -> None:
        self.node = node
        self.exact = exact
        self.ctx = ctx or {}
        self.sets = sets or {}
        self.need = need  # what to split on to learn more about this stage's outputs
        self.parent = parent
        self.needs = needs or {}  # output path -> what to split on to learn about it
        self.inconsistent = False  # the assumptions contradict this stage's rules

    def lookup(self, path: str, raw: bool = False) -> tuple:
        """("v", value) | ("u", need) | ("s", values, need); an absent value is None.
        An earlier stage's output with a few possible values is assumed when the search
        split on it (`raw`: what the stages really give, ignoring the assumption)."""
        an = self.node.an
        cls = an.path_class(path)
        if cls == "fact":
            sigma = self.node.sigma
            return ("v", sigma[path]) if path in sigma else ("u", path)
        if cls == "amount":
            amounts = self.node.amounts
            if isinstance(amounts, str):
                return ("u", amounts)
            return ("v", amounts.get(path))
        if not raw and path in self.node.sigma:
            return ("v", self.node.sigma[path])
        if self.exact:
            return ("v", self.ctx.get(path))
        if path in self.sets:
            values = self.sets[path]
            if not raw:
                split = an.split_for(self, path, values)
                if split is not None:
                    return ("s", values, split)
            return ("s", values, self.needs.get(path) or self.need or _STUCK)
        if self.parent is not None:
            return self.parent.lookup(path, raw)
        return ("v", None)

    def values_of(self, path: str) -> Any:
        """Possible values of an output path (a frozenset, or ANY), assumptions aside."""
        tag, *rest = self.lookup(path, raw=True)
        if tag == "v":
            return frozenset([rest[0]])
        if tag == "s":
            return rest[0]
        return ANY


def _union(a: Any, b: Any) -> Any:
    if a is ANY or b is ANY:
        return ANY
    return a | b


# --------------------------------------------------------------------------- analyzer


class Analyzer:
    def __init__(self, rs: Ruleset, *, node_budget: int = NODE_BUDGET,
                 time_budget: float = TIME_BUDGET) -> None:
        self.rs = rs
        self.node_budget = node_budget
        self.deadline = time.monotonic() + time_budget
        self.time_budget = time_budget
        self.stage_index = {s: i for i, s in enumerate(rs.stages)}
        self.sorted_rules = {s: sorted(rs.stage_rules(s), key=lambda r: (-r.priority, r.order))
                             for s in rs.stages}
        self.plans = plan_rules(rs)
        self.decider = Decider(rs, "reference")
        self._cond_cache: dict[int, Any] = {}
        self._cand_cache: dict[tuple, list] = {}
        self._base_cache: dict[tuple, list] = {}
        self._class_cache: dict[str, str] = {}
        self.nodes = 0
        self.stats: dict[str, Any] = {"nodes": 0, "questions": 0}
        self.skipped: list[str] = []  # questions not started: the time budget ran out
        self._reads_decided_by = {
            s: any(leaf.path == f"decided_by.{s}" for r in rs.rules for leaf in self._leaves(r))
            for s in rs.stages}
        self._outputs_of = {r: frozenset(o.path for o in r.outputs) for r in rs.rules}
        self._barriers: dict[tuple, int] = {}
        self._setter_stages: dict[str, set] = {}
        for r in rs.rules:
            for o in r.outputs:
                self._setter_stages.setdefault(o.path, set()).add(r.stage)
            self._setter_stages.setdefault(f"decided_by.{r.stage}", set()).add(r.stage)
        self._setup_vars()
        self._setup_atoms()

    # -- paths and variables -------------------------------------------------
    def path_class(self, path: str) -> str:
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

    def _leaves(self, rule: Rule):
        yield from walk_leaves(rule.when)
        for o in rule.outputs:
            yield from self._value_leaves(o.value)

    def _value_leaves(self, value: Any):
        if isinstance(value, Choice):
            yield from walk_leaves(value.when)
            yield from self._value_leaves(value.then)
            yield from self._value_leaves(value.otherwise)

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
            for leaf in self._leaves(r):
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
        branch = {_BALANCE, _PROCEEDS} | (reads & set(_AMOUNT_INPUTS))
        cost_paths = [f"disposition.costs.{k}" for k in amounts_mod.COST_KEYS]
        if "amounts.costs" in reads and not branch & set(cost_paths):
            branch.add("disposition.costs.legal")
        if "amounts.credits" in reads:
            branch.add("disposition.credits")
        self.amount_vars = [p for p in _AMOUNT_INPUTS if p in branch]
        self.fixed = {p: Decimal("0.00") for p in _AMOUNT_INPUTS if p not in branch}

        mentioned: dict[str, set] = {}
        for r in rs.rules:
            for leaf in self._leaves(r):
                if leaf.op in (IN, NOT_IN):
                    mentioned.setdefault(leaf.path, set()).update(leaf.value)
                elif leaf.op in (EQ, NE) and not leaf.is_expr:
                    mentioned.setdefault(leaf.path, set()).add(leaf.value)
        for node in self._all_trees():
            for lk in ex.lookups(node):
                mentioned.setdefault(lk.key, set()).update(rs.tables.get(lk.table, {}))

        table_order = list(facts_mod.FACT_FIELDS)
        bounds = _int_bounds()
        self.vars: dict[str, _Var] = {}
        numeric_rank = {p: i for i, p in enumerate(self.amount_vars)}
        for i, path in enumerate(table_order):
            kind = facts_mod.FACT_FIELDS[path]
            if kind == "jurisdiction" or kind == "enum":
                kind = "enum"
            if kind in _NUMERIC:
                if path in numeric_rank:
                    order = 1000 + numeric_rank[path]
                elif kind == "date":
                    order = 2000 + (500 if path == "as_of" else i)
                else:
                    order = 3000 + i
            else:
                order = i
            var = _Var(path, kind, order)
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
                    var.lo = _to_num(facts_mod.MIN_DATE)
                    var.hi = _to_num(facts_mod.MAX_DATE)
            if var.optional and var.finite:
                var.reps = [*var.reps, None]
            self.vars[path] = var
        self.order = {p: v.order for p, v in self.vars.items()}
        self.required_when = _required_when()

    def _all_trees(self):
        for r in self.rs.rules:
            for leaf in self._leaves(r):
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
        if a is None:
            return b
        if b is None:
            return a
        # An earlier stage's output (assumed, split on its few values) after the enum
        # facts and before the numbers.
        return a if self.order.get(a, 500) <= self.order.get(b, 500) else b

    def splittable(self, path: str, values: Any) -> bool:
        """Whether the search may split on an output's possible values (a few plain
        values, and one stage sets it, so "its value" means one thing)."""
        cap = MAX_WINNER_SPLIT if path.startswith("decided_by.") else MAX_OUTPUT_SPLIT
        if values is ANY or len(values) > cap or len(values) < 2:
            return False
        if any(isinstance(v, _Range) for v in values):
            return False
        return len(self._setter_stages.get(path, ())) == 1

    def split_for(self, view: _View, path: str, values: Any) -> str | None:
        """What to split on when a condition cannot tell from an earlier stage's output:
        the rule that decides the deciding stage (it fixes all of its outputs at once),
        else the output's own few values, else None (the stage's undecided rules)."""
        node = view.node
        stages = self._setter_stages.get(path, ())
        decision = self.rs.decision_stage
        winner = f"decided_by.{decision}"
        if stages == {decision} and winner not in node.sigma and path != winner:
            found = view.lookup(winner, raw=True)
            if found[0] == "s" and self.splittable(winner, found[1]):
                node.pending[winner] = found[1]
                return winner
        if self.splittable(path, values):
            node.pending[path] = values
            return path
        return None

    def verify(self, node: _Node, k: int) -> tuple[str, str | None]:
        """Whether the node's assumptions hold: "ok", "open" (with a path to split on
        to learn more) or "inconsistent"."""
        state, need = "ok", None
        if node.view(k).inconsistent:
            return "inconsistent", None
        for path, assumed in node.sigma.items():
            if self.path_class(path) != "output":
                continue
            real = node.view(k).lookup(path, raw=True)
            if real[0] == "v":
                if real[1] != assumed:
                    return "inconsistent", None
            elif real[0] == "s":
                if real[1] is not ANY and assumed not in real[1] and not any(
                        isinstance(v, _Range) for v in real[1]):
                    return "inconsistent", None
                state, need = "open", self.min_need(need, real[2])
            else:
                state, need = "open", self.min_need(need, real[1])
        return state, need

    # -- amounts ---------------------------------------------------------------
    def compute_amounts(self, sigma: dict) -> Any:
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

    def _amount_tree(self, name: str) -> Any:
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

        debt = add((1, ref(_BALANCE)), (1, ref("loan.accrued_interest")), (1, ref("loan.fees")))
        costs = add(*((1, ref(f"disposition.costs.{k}")) for k in amounts_mod.COST_KEYS))
        credits = add((1, ref("disposition.credits")))
        claim = add((1, debt), (1, costs), (-1, credits))
        proceeds = ex.Ref(_PROCEEDS)
        zero = ex.Num(Decimal(0))
        return {
            "debt": debt, "costs": costs, "credits": credits, "claim": claim,
            "proceeds": proceeds,
            "deficiency": ex.Call("max", (ex.BinOp("-", claim, proceeds), zero)),
            "surplus": ex.Call("max", (ex.BinOp("-", proceeds, claim), zero)),
        }[name]

    # -- comparisons for the numeric representatives ---------------------------
    def _setup_atoms(self) -> None:
        """Every numeric comparison, as `lhs - rhs` over fact paths (outputs expanded)."""
        self.atoms: list[tuple[Any, frozenset, int, bool]] = []
        seen: set[tuple] = set()

        def add(diff: Any, k: int, is_value: bool) -> None:
            key = (repr(diff), k, is_value)
            if key in seen:
                return
            seen.add(key)
            refs = {n for n in ex.refs(diff) if self.path_class(n) == "fact"}
            self.atoms.append((diff, frozenset(refs), k, is_value))

        for r in self.rs.rules:
            k = self.stage_index[r.stage]
            in_when = {id(leaf) for leaf in walk_leaves(r.when)}
            for leaf in self._leaves(r):
                is_value = id(leaf) not in in_when  # the `if` of a conditional output
                if leaf.kind not in _NUMERIC or leaf.op in (EXISTS, MISSING):
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
            deficiency = self._amount_tree("deficiency")
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
            cls = self.path_class(name)
            if cls == "fact":
                return [node]
            if cls == "amount":
                return [self._amount_tree(name[len("amounts."):])]
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
            return _pl_const(Fraction(node.value))
        if isinstance(node, _Const):
            return _pl_const(_to_num(node.value))
        if isinstance(node, ex.Ref):
            if node.name == x:
                return _pl_var()
            const = self.rs.constant(node.name)
            if const is not None:
                return _pl_const(_to_num(const))
            if node.name not in env:
                raise _Unresolved(node.name)
            value = env[node.name]
            if value is None:
                raise _Absent
            return _pl_const(_to_num(value))
        if isinstance(node, ex.Lookup):
            if node.key not in env:
                raise _Unresolved(node.key)
            value = self.rs.tables.get(node.table, {}).get(env[node.key])
            if value is None:
                raise _Absent
            return _pl_const(_to_num(value))
        if isinstance(node, ex.Neg):
            return _pl_scale(self._pl(node.operand, x, env), Fraction(-1))
        if isinstance(node, ex.BinOp):
            left, right = self._pl(node.left, x, env), self._pl(node.right, x, env)
            if node.op == "+":
                return _pl_add(left, right)
            if node.op == "-":
                return _pl_add(left, right, -1)
            if len(left) == 1 and left[0][1] == 0:
                return _pl_scale(right, left[0][2])
            if len(right) == 1 and right[0][1] == 0:
                return _pl_scale(left, right[0][2])
            raise _Unresolved("*")
        if isinstance(node, ex.Call):
            parts = [self._pl(a, x, env) for a in node.args]
            acc = parts[0]
            for p in parts[1:]:
                acc = _pl_minmax(acc, p, node.func == "max")
            return acc
        raise _Unresolved(repr(node))

    def _critical(self, var: _Var, atoms: list, sigma: dict,
                  substitute: bool) -> tuple[set, bool]:
        """Critical points (Fractions) of `var` in the atoms, the assigned paths fixed;
        and whether some were anticipated (other numbers still unassigned)."""
        points: set[Fraction] = set()
        anticipated = False
        for diff, refs, _k, _v in atoms:
            others = [p for p in refs if p != var.path and p not in sigma]
            if others and not substitute:
                continue
            if any(not self.vars[p].finite for p in others):
                anticipated = True
            choices = []
            for p in others:
                ov = self.vars[p]
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
                points.update(_pl_roots(f))
        return points, anticipated

    def _base(self, var: _Var) -> list:
        """A number's own constant critical values (its floor included), for anticipation."""
        cached = self._base_cache.get((var.path, self.scope))
        if cached is not None:
            return cached
        atoms = [a for a in self.atoms_by_var.get(var.path, [])
                 if all(self.vars[p].finite or p == var.path for p in a[1])]
        points, _ = self._critical(var, atoms, dict(self.fixed), substitute=True)
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

    def candidates(self, var: _Var, sigma: dict) -> list:
        """Representative values of a path, given the assigned ones."""
        if var.finite:
            reps = var.reps
            if var.optional and self._must_exist(var.path, sigma):
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
                values = {_to_num(typical) if typical is not None else var.lo}
            cached = [var.from_num(x) for x in sorted(values)]
            self._cand_cache[key] = cached
        if var.optional and not self._must_exist(var.path, sigma):
            return [*cached, None]
        return cached

    def _must_exist(self, path: str, sigma: dict) -> bool:
        cond = self.required_when.get(path)
        return bool(cond) and sigma.get(cond[0]) == cond[1]

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
            min_need = self.min_need

            def junction(view: _View) -> Any:
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

            def negation(view: _View) -> Any:
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
        compare = _CMP.get(op)
        expr3 = self.expr3
        min_need = self.min_need
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

        def leaf_fn(view: _View) -> Any:
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
            results = {v.test(op, other) if isinstance(v, _Range) else test(v, other)
                       for v in values}
            if len(results) == 1 and None not in results:
                return results.pop()
            return found[2]

        return leaf_fn

    def _domain_test(self, leaf: Leaf) -> Any:
        """For a leaf on a fact: fn(other) -> True/False when every value the fact can
        take (absent included, when optional) decides the test, else None."""
        var = self.vars.get(leaf.path)
        if var is None or leaf.op in (EXISTS, MISSING):
            return None
        op, optional = leaf.op, var.optional
        if not var.finite:
            whole = _Range(var.lo, var.hi)

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

    def expr3(self, node: Any, view: _View) -> Any:
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
                if not isinstance(value, _Range):
                    return value
            raise _NeedExc(found[2])

        try:
            return ex.evaluate(node, get, rs.tables)
        except ex.Undefined:
            return None
        except _NeedExc as need:
            return _Need(need.var)

    def value3(self, value: Any, path: str, view: _View) -> tuple:
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

    def value_set(self, value: Any, path: str, view: _View) -> Any:
        if isinstance(value, Choice):
            c = self.cond(value.when)(view)
            if c is True:
                return self.value_set(value.then, path, view)
            if c is False:
                return self.value_set(value.otherwise, path, view)
            return _union(self.value_set(value.then, path, view),
                          self.value_set(value.otherwise, path, view))
        r = self.value3(value, path, view)
        if r[0] == "v":
            return frozenset([r[1]])
        if r[0] == "u" and isinstance(value, Expr):
            try:
                lo, hi = self.range3(value.node, view)
            except _GiveUp:
                return ANY
            return frozenset([_Range(lo, hi)])
        return ANY

    def range3(self, node: Any, view: _View) -> tuple[Fraction, Fraction]:
        """Bounds of a numeric expression whatever the unassigned paths are."""
        if isinstance(node, ex.Num):
            x = Fraction(node.value)
            return x, x
        if isinstance(node, ex.Ref):
            const = self.rs.constant(node.name)
            if const is not None:
                x = _to_num(const)
                return x, x
            found = view.lookup(node.name)
            if found[0] == "v":
                if found[1] is None or isinstance(found[1], (bool, str)):
                    raise _GiveUp
                x = _to_num(found[1])
                return x, x
            if found[0] == "s":
                return self._hull(found[1])
            cls = self.path_class(node.name)
            if cls == "fact":
                var = self.vars[node.name]
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
            if isinstance(v, _Range):
                los.append(v.lo)
                his.append(v.hi)
            elif v is None or isinstance(v, (bool, str)):
                raise _GiveUp
            else:
                los.append(_to_num(v))
                his.append(_to_num(v))
        return min(los), max(his)

    # -- earlier stages --------------------------------------------------------
    def build_view(self, node: _Node, k: int) -> _View:
        if k == 0:
            return _View(node, True, {}, None, None, None)
        base = node.view(k - 1)
        stage = self.rs.stages[k - 1]
        rules = self.sorted_rules[stage]
        status = [self.cond(r.when)(base) for r in rules]
        decision = stage == self.rs.decision_stage
        appends_matter = self._reads_decided_by[stage]
        exact, need = base.exact, None
        held: dict[str, int] = {}
        matched: list[Rule] = []
        for r, st in zip(rules, status, strict=True):
            relevant = (appends_matter and bool(r.appends)) or any(
                held.get(o.path, -1) <= r.priority for o in r.outputs)
            if st is False:
                continue
            if st is not True:
                if relevant:
                    exact = False
                    need = need or st
                continue
            for o in r.outputs:
                if held.get(o.path, -1) > r.priority:
                    continue
                v = self.value3(o.value, o.path, base)
                if v[0] == "u":
                    exact = False
                    need = need or v[1]
                held.setdefault(o.path, r.priority)
            matched.append(r)
        if decision and isinstance(node.amounts, str):
            exact = False
            need = need or node.amounts
        if exact:
            ctx = dict(base.ctx)
            for p, v in node.sigma.items():
                if v is not None and self.path_class(p) == "fact":  # not assumed outputs
                    ctx[p] = v
            if not isinstance(node.amounts, str):
                ctx.update(node.amounts)
            res = Resolution(ctx)
            resolve_stage(self.rs, stage, matched, res, self.plans)
            return _View(node, True, res.ctx, None, None, None)
        safe = [st is True and self._cannot_fail(r, base) for r, st in zip(rules, status,
                                                                              strict=True)]
        ids: set = {None}
        for r, st, ok in zip(rules, status, safe, strict=True):
            if st is False:
                continue
            ids.add(r.id)
            if ok:
                break
        # Possible values of every output this stage sets.
        sets: dict[str, Any] = {f"decided_by.{stage}": frozenset(ids)}
        inconsistent = False
        winner = node.sigma.get(f"decided_by.{stage}") if decision else None
        if winner is not None:
            # In the deciding stage, `decided_by` = w means: w is the first rule that
            # matches, and nothing failed (a failure is a review, without decided_by).
            status = list(status)
            safe = list(safe)
            for i, r in enumerate(rules):
                if r.id == winner:
                    inconsistent = inconsistent or status[i] is False
                    status[i], safe[i] = True, True
                    break
                inconsistent = inconsistent or status[i] is True
                status[i] = False
        paths = dict.fromkeys(o.path for r in rules for o in r.outputs)
        assumed = {p: v for p, v in node.sigma.items()
                   if p in paths and self._setter_stages.get(p) == {stage}}
        needs: dict[str, str] = {}
        for path in paths:
            values: Any = frozenset()
            definite = False
            p_need = None
            for i, (r, st) in enumerate(zip(rules, status, strict=True)):
                if st is False or path not in self._outputs_of[r]:
                    continue
                if assumed and not self._compatible(r, i, rules, path, assumed, base):
                    if safe[i]:
                        definite = True  # it would set the value: an earlier rule must
                        break
                    continue
                value = _output(r, path)
                values = _union(values, self.value_set(value, path, base))
                if p_need is None:
                    if st is not True:
                        p_need = st
                    elif not isinstance(value, Literal):
                        v = self.value3(value, path, base)
                        p_need = v[1] if v[0] == "u" else None
                if safe[i]:
                    definite = True  # it matches, cannot fail: it sets the value
                    break
            if not definite:
                values = _union(values, base.values_of(path))
                p_need = p_need or base.need
            if not values:
                inconsistent = True  # no rule can give it a value the assumptions allow
            sets[path] = values
            if p_need is not None:
                needs[path] = p_need
        review = (decision and winner is None
                  and assumed.get("outcome.bearer", "review") == "review")
        if review:
            fallback = {"outcome.bearer": "review", "outcome.action": "refer",
                        "outcome.lender_absorbs": Decimal("0.00")}
            for path, v in fallback.items():
                sets[path] = _union(sets.get(path, frozenset()), frozenset([v]))
        if decision:
            sets["outcome.basis"] = ANY
            # Settled: both sides are within [0, deficiency], or the outcome is a review.
            amounts = node.amounts
            known = not isinstance(amounts, str)
            top = (_to_num(amounts["amounts.deficiency"]) if known
                   else Fraction(facts_mod.MAX_MONEY) * 3)
            for path, review_value in (("outcome.borrower_owes", None),
                                       ("outcome.lender_absorbs", Decimal("0.00"))):
                values = sets.get(path, ANY)
                if values is ANY or None in values:
                    values = frozenset([_Range(Fraction(0), top)])
                else:
                    values = frozenset(v if isinstance(v, _Range) else v.quantize(CENT)
                                       for v in values)
                if review:
                    extra = (review_value if review_value is not None
                             else _Range(top if known else 0, top))
                    values = values | {extra}
                sets[path] = values
        if decision and f"decided_by.{stage}" in node.sigma and winner is None:
            # No rule decided (or one failed): the outcome is a review.
            sets["outcome.bearer"] = frozenset(["review"])
            sets["outcome.action"] = frozenset(["refer"])
            sets["outcome.lender_absorbs"] = frozenset([Decimal("0.00")])
            sets["outcome.borrower_owes"] = frozenset([_Range(top, top) if known
                                                       else _Range(Fraction(0), top)])
        view = _View(node, False, None, sets, need or base.need, base, needs)
        view.inconsistent = inconsistent or base.inconsistent
        return view

    def _cannot_fail(self, r: Rule, base: _View) -> bool:
        """Whether every output of the rule computes (no undefined or negative amount)."""
        return all(isinstance(o.value, Literal) or self.value3(o.value, o.path, base)[0] == "v"
                   for o in r.outputs)

    def _compatible(self, r: Rule, i: int, rules: list[Rule], path: str, assumed: dict,
                    base: _View) -> bool:
        """Whether `r` can be the rule that sets `path`, given the assumed values of the
        stage's other outputs: if r sets `path` and an assumed output q, and every rule
        before r that sets q also sets `path`, then r sets q too - with r's value."""
        outputs = self._outputs_of[r]
        decision = r.stage == self.rs.decision_stage
        for q, v in assumed.items():
            if q == path or q not in outputs:
                continue
            if decision and q in _REVIEW_SETS and _REVIEW_SETS[q] in (None, v):
                continue  # a failed outcome becomes a review whichever rule set it
            if self._barrier(rules, q, path) < i:
                continue
            values = self.value_set(_output(r, q), q, base)
            if values is ANY or any(isinstance(x, _Range) for x in values):
                continue
            if v not in values:
                return False
        return True

    def _barrier(self, rules: list[Rule], q: str, path: str) -> int:
        """Index of the first rule (in resolution order) that sets q but not path."""
        key = (id(rules), q, path)
        found = self._barriers.get(key)
        if found is None:
            found = next((i for i, h in enumerate(rules)
                          if q in self._outputs_of[h] and path not in self._outputs_of[h]),
                         len(rules))
            self._barriers[key] = found
        return found

    # -- search ----------------------------------------------------------------
    def _tick(self) -> None:
        self.nodes += 1
        self.stats["nodes"] += 1
        if self.nodes > self.node_budget or time.monotonic() > self.deadline:
            raise _Budget

    def search(self, k: int, goal: Any, on_true: Any, on_false: Any = None) -> None:
        """Depth-first over partial assignments, for a question about stage k.
        `goal(node)` -> True | False | path to split on; `on_true(node)` returns "stop",
        "unwind" (skip the remaining numeric alternatives up to the nearest enum
        split) or None."""
        self.nodes = 0
        self.stats["questions"] += 1

        def dfs(sigma: dict) -> str | None:
            self._tick()
            node = _Node(self, sigma)
            state, open_need = self.verify(node, k) if len(sigma) > len(self.fixed) else (
                "ok", None)
            if state == "inconsistent":
                return None
            g = goal(node)
            if g is True and state == "open":
                g = open_need  # an assumed output is not known yet: learn more first
            if g is True:
                return on_true(node)
            if g is False:
                if on_false is not None:
                    on_false(node)
                return None
            if g in sigma:  # pragma: no cover - a bug in the three-valued evaluation
                raise RuntimeError(f"analysis split on {g} twice")
            var = self.vars.get(g)
            if var is None:  # an earlier stage's output: assume each possible value
                if g not in node.pending:  # nothing left to split on: give up, soundly
                    raise _Budget
                values = sorted(node.pending[g], key=repr)
                finite = True
            else:
                values = self.candidates(var, sigma)
                finite = var.finite
            for value in values:
                signal = dfs({**sigma, g: value})
                if signal == "stop":
                    return "stop"
                if signal == "unwind":
                    if finite:
                        continue
                    return "unwind"
            return None

        dfs(dict(self.fixed))

    # -- concrete facts --------------------------------------------------------
    def concretize(self, sigma: dict) -> tuple[dict, dict] | None:
        """A valid JSON fact set in the region (unassigned paths: defaults), validated."""
        values: dict[str, Any] = {}
        for path in facts_mod.FACT_REQUIRED:
            if path in sigma:
                continue
            var = self.vars[path]
            if path in _REQUIRED_DEFAULTS:
                values[path] = _REQUIRED_DEFAULTS[path]
            elif path == "collateral.kind":
                values[path] = _KIND_FOR_LOAN.get(sigma.get("loan.type", "auto"), "other")
            elif var.finite:
                values[path] = var.other if var.other is not None else var.reps[0]
        for path, (cond_path, cond_value) in self.required_when.items():
            if path not in sigma and sigma.get(cond_path) == cond_value:
                values[path] = Decimal("0.00")
        for path, v in sigma.items():
            if path in self.fixed or v is None or self.path_class(path) != "fact":
                continue
            values[path] = v
        if "as_of" not in values:
            sale = values.get("disposition.date", _REQUIRED_DEFAULTS["disposition.date"])
            values["as_of"] = sale + datetime.timedelta(days=30)
        raw: dict = {}
        for path in facts_mod.FACT_FIELDS:
            if path not in values:
                continue
            v = values[path]
            parts = path.split(".")
            target = raw
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            if isinstance(v, Decimal):
                v = f"{v:.2f}"
            elif isinstance(v, datetime.date):
                v = v.isoformat()
            target[parts[-1]] = v
        try:
            facts = facts_mod.validate_facts(raw)
        except facts_mod.FactsInvalid:
            return None
        return raw, facts

    def stage_context(self, facts: dict, stage: str) -> dict:
        """The reference context the rules of `stage` see (earlier stages resolved)."""
        amounts = amounts_mod.compute_amounts(facts)
        res = Resolution(context(facts, amounts))
        for s in self.rs.stages:
            if s == stage:
                break
            matched = [r for r in self.rs.stage_rules(s) if holds(r.when, res.ctx, self.rs)]
            resolve_stage(self.rs, s, matched, res, self.plans)
        return dict(res.ctx)

    # -- rendering -------------------------------------------------------------
    def region_of(self, sigma: dict) -> dict:
        conditions: dict[str, Any] = {}
        example: dict[str, Any] = {}
        for path in facts_mod.FACT_FIELDS:
            if path not in sigma or path in self.fixed:
                continue
            v = sigma[path]
            var = self.vars[path]
            if var.finite:
                conditions[path] = [v]
            else:
                example[path] = v
        amounts = self.compute_amounts(sigma)
        if not isinstance(amounts, str):
            example["amounts.deficiency"] = amounts["amounts.deficiency"]
        return {"conditions": conditions, "example": example}

    def render_value(self, path: str, v: Any) -> str:
        var = self.vars.get(path)
        if v is None:
            return "absent"
        if var is not None and var.other is not None and v == var.other:
            return f"{v} (or any value no rule names)"
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(json_value(v))

    def region_text(self, region: dict) -> str:
        parts = []
        for path, values in region["conditions"].items():
            if len(values) == 1:
                v = values[0]
                parts.append(f"{path} absent" if v is None else
                             f"{path}={self.render_value(path, v)}")
            else:
                shown = ", ".join(self.render_value(path, v) for v in values)
                parts.append(f"{path} in {{{shown}}}")
        text = ", ".join(parts) or "any facts"
        if region["example"]:
            nums = ", ".join(f"{p}={self.render_value(p, v)}"
                             for p, v in region["example"].items())
            text += f"; e.g. {nums}"
        return text

    def region_json(self, region: dict) -> dict:
        conditions = {}
        unnamed = {}
        for path, values in region["conditions"].items():
            vals = [json_value(v) for v in values]
            conditions[path] = vals[0] if len(vals) == 1 else vals
            var = self.vars[path]
            if var.other is not None and var.other in values:
                unnamed[path] = var.other
        return {"conditions": conditions,
                "example_values": {p: json_value(v) for p, v in region["example"].items()},
                "unnamed_values": unnamed, "text": self.region_text(region)}


# --------------------------------------------------------------------------- questions


def _merge_regions(an: Analyzer, regions: list[dict]) -> list[dict]:
    """Regions differing only in one enum path's value become one region with a set of
    values; a path whose values cover all of its representatives is dropped."""
    regions = [dict(r, index=i) for i, r in enumerate(regions)]
    changed = True
    while changed:
        changed = False
        paths = dict.fromkeys(p for r in regions for p in r["conditions"])
        for path in paths:
            groups: dict[tuple, list[dict]] = {}
            rest = []
            for r in regions:
                cond = r["conditions"]
                if path not in cond:
                    rest.append(r)
                    continue
                key = tuple((p, tuple(map(repr, v))) for p, v in cond.items() if p != path)
                groups.setdefault(key, []).append(r)
            merged = []
            for group in groups.values():
                first = group[0]
                if len(group) == 1:
                    merged.append(first)
                    continue
                changed = True
                values: list = []
                for r in group:
                    values += [v for v in r["conditions"][path] if v not in values]
                conditions = dict(first["conditions"])
                reps = an.vars[path].reps
                if all(v in values for v in reps):
                    del conditions[path]
                else:
                    conditions[path] = sorted(values, key=reps.index)
                merged.append({"conditions": conditions, "example": first["example"],
                               "index": min(r["index"] for r in group)})
            regions = sorted(merged + rest, key=lambda r: r["index"])
    return [{"conditions": r["conditions"], "example": r["example"]} for r in regions]


def find_gaps(an: Analyzer) -> list[Finding]:
    rs = an.rs
    stage = rs.decision_stage
    k = an.stage_index[stage]
    deciders = [r for r in an.sorted_rules[stage] if r.sets("outcome.bearer")]
    conds = [an.cond(r.when) for r in deciders]
    an.set_scope(k, False)
    found: list[tuple[dict, dict]] = []
    unconfirmed = [0]
    started = time.monotonic()
    listing = [False]  # stopped listing regions before the search ended

    def goal(node: _Node) -> Any:
        view = node.view(k)
        need = None
        for c in conds:
            st = c(view)
            if st is True:
                return False
            if st is not False:
                need = an.min_need(need, st)
        return True if need is None else need

    def on_true(node: _Node) -> str | None:
        concrete = an.concretize(node.sigma)
        if concrete is not None:
            raw, facts = concrete
            _amounts, res = an.decider.evaluate(facts)
        if concrete is None or res.ctx.get("outcome.basis") != NO_RULE_DECIDED:
            unconfirmed[0] += 1
            return "stop" if unconfirmed[0] >= MAX_UNCONFIRMED else None
        found.append((node.sigma, raw))
        if len(found) >= MAX_GAP_REGIONS or time.monotonic() - started > GAP_LISTING_SECONDS:
            listing[0] = True
            return "stop"
        return "unwind"

    incomplete = False
    try:
        an.search(k, goal, on_true)
    except _Budget:
        if found:
            listing[0] = True  # a budget spent listing more regions only shortens the list
        else:
            incomplete = True
    findings = []
    if found:
        regions = _merge_regions(an, [an.region_of(sigma) for sigma, _raw in found])
        truncated = listing[0] or incomplete
        count = f"{'at least ' if truncated else ''}{len(regions)}"
        message = (f"gap: no rule of stage {stage} sets outcome.bearer in {count} input "
                   f"region(s); such facts are decided 'review / refer: {NO_RULE_DECIDED}'")
        details = [f"region: {an.region_text(r)}" for r in regions[:GAP_REGIONS_SHOWN]]
        if len(regions) > GAP_REGIONS_SHOWN:
            details.append(f"… and {len(regions) - GAP_REGIONS_SHOWN} more region(s)")
        findings.append(Finding(
            "gap", "error", stage, message, [], None,
            [an.region_json(r) for r in regions], found[0][1], details, truncated))
    if incomplete:
        findings.append(_incomplete(an, stage, "the search for gaps"))
    if unconfirmed[0] and not found:
        findings.append(Finding(
            "incomplete", "warning", stage,
            f"analysis incomplete: {unconfirmed[0]} candidate gap(s) in stage {stage} were "
            "not confirmed by the reference evaluator"))
    return findings


def _incomplete(an: Analyzer, stage: str, what: str, rule: Rule | None = None) -> Finding:
    why = (f"the time budget ({an.time_budget:g} s)" if time.monotonic() > an.deadline
           else f"the node budget ({an.node_budget} partial assignments)")
    message = f"analysis incomplete: {what} in stage {stage} ran out of {why}"
    return Finding("incomplete", "warning", stage, message,
                   [rule.id] if rule else [], rule.pos if rule else None)


def _scalar_paths(rule: Rule) -> list[str]:
    return list(dict.fromkeys(o.path for o in rule.outputs))


def _output(rule: Rule, path: str) -> Any:
    for o in rule.outputs:
        if o.path == path:
            return o.value
    raise KeyError(path)


def find_conflicts(an: Analyzer) -> list[Finding]:
    findings: list[Finding] = []
    for stage in an.rs.stages:
        k = an.stage_index[stage]
        rules = an.sorted_rules[stage]
        for r1, r2 in itertools.combinations(rules, 2):
            if r1.priority != r2.priority:
                continue
            common = [p for p in _scalar_paths(r1) if r2.sets(p)]
            common = [p for p in common
                      if not (isinstance(_output(r1, p), Literal)
                              and isinstance(_output(r2, p), Literal)
                              and _output(r1, p).value == _output(r2, p).value)]
            if not common:
                continue
            if time.monotonic() > an.deadline:
                an.skipped.append(f"conflicts of {r1.id} and {r2.id}")
                continue
            finding = _conflict(an, k, stage, r1, r2, common)
            if finding:
                findings.append(finding)
    return findings


def _conflict(an: Analyzer, k: int, stage: str, r1: Rule, r2: Rule,
              paths: list[str]) -> Finding | None:
    higher = {p: [h for h in an.sorted_rules[stage] if h.priority > r1.priority and h.sets(p)]
              for p in paths}
    c1, c2 = an.cond(r1.when), an.cond(r2.when)
    an.set_scope(k, True)
    result: list = []
    unconfirmed = [0]

    def goal(node: _Node) -> Any:
        view = node.view(k)
        need = None
        for c in (c1, c2):
            st = c(view)
            if st is False:
                return False
            if st is not True:
                need = an.min_need(need, st)
        open_path = False
        first_need = need  # split first on what the two rules read
        for p in paths:
            p_need = None
            masked = False
            for h in higher[p]:
                sh = an.cond(h.when)(view)
                if sh is True:
                    masked = True
                    break
                if sh is not False and p_need is None:
                    p_need = sh  # the highest undecided rule that could mask the tie
            if masked:
                continue
            v1, v2 = an.value3(_output(r1, p), p, view), an.value3(_output(r2, p), p, view)
            if v1[0] == "err" or v2[0] == "err":
                continue  # the rule fails instead of setting a value: no tie on p
            if v1[0] == "v" and v2[0] == "v":
                if v1[1] == v2[1]:
                    continue
                if need is None and p_need is None:
                    return True
            for v in (v1, v2):
                if v[0] == "u":
                    p_need = an.min_need(p_need, v[1])
            open_path = True
            need = an.min_need(need, p_need)
        if not open_path:
            return False
        return first_need or need or False

    def on_true(node: _Node) -> str | None:
        found = confirm(node)
        if found is None:
            unconfirmed[0] += 1
            return "stop" if unconfirmed[0] >= MAX_UNCONFIRMED else None
        result.append(found)
        return "stop"

    def confirm(node: _Node) -> tuple | None:
        concrete = an.concretize(node.sigma)
        if concrete is None:
            return None
        raw, facts = concrete
        ctx = an.stage_context(facts, stage)
        if not (holds(r1.when, ctx, an.rs) and holds(r2.when, ctx, an.rs)):
            return None
        differing = []
        for p in paths:
            if any(holds(h.when, ctx, an.rs) for h in higher[p]):
                continue
            fn1 = {o[0]: o[1] for o in an.plans[r1].outputs}[p]
            fn2 = {o[0]: o[1] for o in an.plans[r2].outputs}[p]
            try:
                v1, v2 = fn1(ctx), fn2(ctx)
            except OutputError:
                continue
            if v1 != v2:
                differing.append((p, v1, v2))
        return (raw, differing) if differing else None

    try:
        an.search(k, goal, on_true)
    except _Budget:
        return _incomplete(an, stage, f"the conflict check of {r1.id} and {r2.id}", rule=r2)
    if not result:
        if unconfirmed[0]:
            return Finding("incomplete", "warning", stage,
                           f"analysis incomplete: {unconfirmed[0]} candidate conflict(s) of "
                           f"{r1.id} and {r2.id} were not confirmed by the reference evaluator",
                           [r1.id, r2.id], r2.pos)
        return None
    raw, differing = result[0]
    shown = "; ".join(f"{p}: {json_value(v1)!r} vs {json_value(v2)!r}"
                      for p, v1, v2 in differing)
    message = (f"conflict: rules {r1.id} ({r1.pos}) and {r2.id} ({r2.pos}) both have priority "
               f"{r1.priority} in stage {stage}, can match the same facts and set different "
               f"values ({shown})")
    return Finding("conflict", "error", stage, message, [r1.id, r2.id], r2.pos, [], raw,
                   [f"the reference evaluator matches both rules on the example facts "
                    f"({', '.join(p for p, _a, _b in differing)} differ)"])


def _pick_need(an: Analyzer, own: str | None, others: list[str]) -> str | None:
    """What to split on to prove or refute that competitors cover a rule: a path both
    the rule and a competitor wait on; else the enum path most competitors wait on
    (one split may make one of them true everywhere); else the rule's own; else the
    highest competitor's."""
    if own is not None and own in others:
        return own
    counts: dict[str, int] = {}
    for need in others:
        var = an.vars.get(need)
        if var is not None and var.finite:
            counts[need] = counts.get(need, 0) + 1
    if counts:
        return max(counts, key=lambda p: (counts[p], -an.order.get(p, 0)))
    return own or (others[0] if others else None)


def find_shadowed(an: Analyzer) -> list[Finding]:
    findings: list[Finding] = []
    for stage in an.rs.stages:
        k = an.stage_index[stage]
        rules = an.sorted_rules[stage]
        for r in rules:
            if r.appends or not r.outputs:
                continue  # list outputs always apply when the rule matches
            if time.monotonic() > an.deadline:
                an.skipped.append(f"shadowing of {r.id}")
                continue
            finding = _shadowed(an, k, stage, r)
            if finding:
                findings.append(finding)
    return findings


def _shadowed(an: Analyzer, k: int, stage: str, rule: Rule) -> Finding | None:
    # The rules resolved before it: higher priority, or equal priority and earlier in
    # the files (an equal-priority rule that already holds an output keeps it).
    before = an.sorted_rules[stage][:an.sorted_rules[stage].index(rule)]
    outs = [(p, [h for h in before if h.sets(p)]) for p in _scalar_paths(rule)]
    c = an.cond(rule.when)
    an.set_scope(k, False)
    shadowers: dict[str, Rule] = {}
    witness: list = []
    unconfirmed = [0]

    def goal(node: _Node) -> Any:
        view = node.view(k)
        st = c(view)
        if st is False:
            return False
        cover: list[Rule] = []
        h_needs: list[str] = []
        all_covered = True
        for _path, hs in outs:
            covered = False
            open_needs = []
            for h in hs:
                sh = an.cond(h.when)(view)
                if sh is True:
                    covered = True
                    cover.append(h)
                    break
                if sh is not False:
                    open_needs.append(sh)
            if covered:
                continue
            all_covered = False
            if not open_needs and st is True:
                return True  # it matches and nothing before it sets this output
            h_needs += open_needs
        if all_covered:
            for h in cover:
                shadowers.setdefault(h.id, h)
            return False
        return _pick_need(an, None if st is True else st, h_needs)

    def on_true(node: _Node) -> str | None:
        concrete = an.concretize(node.sigma)
        if concrete is not None:
            raw, facts = concrete
            _amounts, res = an.decider.evaluate(facts)
            if any(e["rule"] == rule.id and e["applied"] for e in res.trace):
                witness.append(raw)
                return "stop"
        unconfirmed[0] += 1
        return "stop" if unconfirmed[0] >= MAX_UNCONFIRMED else None

    try:
        an.search(k, goal, on_true)
    except _Budget:
        return _incomplete(an, stage, f"the shadowing check of {rule.id}", rule=rule)
    if witness:
        return None
    if unconfirmed[0]:
        return Finding("incomplete", "warning", stage,
                       f"analysis incomplete: rule {rule.id} looks unreachable but "
                       f"{unconfirmed[0]} candidate fact set(s) were not confirmed",
                       [rule.id], rule.pos)
    if not shadowers:
        return Finding("unreachable", "warning", stage,
                       f"unreachable: rule {rule.id} (priority {rule.priority}) can never "
                       "match: no valid facts satisfy its condition", [rule.id], rule.pos)
    names = sorted(shadowers.values(), key=lambda h: (-h.priority, h.order))
    listed = ", ".join(f"{h.id} (priority {h.priority}"
                       + (", equal but earlier in the files)" if h.priority == rule.priority
                          else ")") for h in names)
    return Finding("shadowed", "warning", stage,
                   f"shadowed: rule {rule.id} (priority {rule.priority}) never applies: "
                   f"higher-priority rule(s) {listed} match every case it matches and set "
                   f"every output it sets", [rule.id, *(h.id for h in names)], rule.pos)


def analyse(rs: Ruleset, *, time_budget: float = TIME_BUDGET,
            node_budget: int = NODE_BUDGET) -> tuple[list[Finding], dict]:
    """Gaps, conflicts and shadowed rules of a loaded ruleset, and run statistics."""
    started = time.monotonic()
    an = Analyzer(rs, node_budget=node_budget, time_budget=time_budget)
    try:
        findings = find_gaps(an) + find_conflicts(an) + find_shadowed(an)
    finally:
        an.decider.close()
    if an.skipped:
        shown = ", ".join(an.skipped[:6]) + (f" and {len(an.skipped) - 6} more"
                                             if len(an.skipped) > 6 else "")
        findings.append(Finding(
            "incomplete", "warning", "",
            f"analysis incomplete: the time budget ({an.time_budget:g} s) ran out before "
            f"{len(an.skipped)} question(s) were examined: {shown}"))
    stats = {"seconds": round(time.monotonic() - started, 3), "nodes": an.stats["nodes"],
             "questions": an.stats["questions"]}
    return findings, stats
