"""What the rules of a stage see of the earlier stages during the search.

A view is either exact (every rule that could still matter is decided: the real
resolver runs on the partial facts) or a set of possible values per output,
numbers bounded by ranges. When a condition cannot tell from such a set, the
search splits on the rule that decides the deciding stage (`decided_by`) or on
the output's own few values; these assumptions are checked at every step.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

from ... import facts as facts_mod
from ...engine.resolver import Resolution, resolve_stage
from ...policy.model import Literal, Rule, Ruleset
from .conditions import Conditions
from .domain import Domain
from .limits import MAX_OUTPUT_SPLIT, MAX_WINNER_SPLIT
from .partition import Partition
from .piecewise import to_num
from .rules import output_value, rule_leaves
from .values import ANY, CENT, Range, union

#: A "path to split on" when nothing is left to split on (the question gives up).
_STUCK = "\0nothing to split on"
#: Outputs a review (no rule decided, or the deciding rule failed) overwrites, with the
#: review's value (None: a value that depends on the facts).
_REVIEW_SETS = {"outcome.bearer": "review", "outcome.action": "refer", "outcome.basis": None,
                "outcome.borrower_owes": None, "outcome.lender_absorbs": None}


class Node:
    """One partial assignment, with its amounts and stage views computed on demand."""

    __slots__ = ("stages", "sigma", "_amounts", "_views", "pending")

    def __init__(self, stages: Stages, sigma: dict) -> None:
        self.stages = stages
        self.sigma = sigma  # fact path -> value; an output path -> an assumed value
        self._amounts: Any = None
        self._views: dict[int, View] = {}
        self.pending: dict[str, Any] = {}  # output path -> possible values, to split on

    @property
    def amounts(self) -> Any:
        """dict of `amounts.*` values, or the name of an amount fact still to assign."""
        if self._amounts is None:
            self._amounts = self.stages.domain.compute_amounts(self.sigma)
        return self._amounts

    def view(self, k: int) -> View:
        """What the rules of stage k see: facts, amounts, outputs of stages before k."""
        v = self._views.get(k)
        if v is None:
            v = self.stages.build_view(self, k)
            self._views[k] = v
        return v


class View:
    """What the rules of one stage see: exact (`ctx`, resolved) or, per output of the
    stage before, its possible values (`sets`) and what to split on to learn more."""

    __slots__ = ("node", "exact", "ctx", "sets", "need", "parent", "needs", "inconsistent")

    def __init__(self, node: Node, exact: bool, ctx: dict | None, sets: dict | None,
                 need: str | None, parent: View | None, needs: dict | None = None) -> None:
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
        stages = self.node.stages
        cls = stages.path_class(path)
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
                split = stages.split_for(self, path, values)
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


class Stages:
    """Builds the views of a node, stage by stage, and checks the node's assumptions."""

    def __init__(self, rs: Ruleset, domain: Domain, conditions: Conditions,
                 sorted_rules: dict[str, list[Rule]], plans: Any,
                 partitions: dict[str, Partition]) -> None:
        self.rs = rs
        self._partitions = partitions  # per stage: which rules can still match at a node
        self.domain = domain
        self.path_class = domain.path_class
        self.conditions = conditions
        self.sorted_rules = sorted_rules
        self.plans = plans
        self._reads_decided_by = {
            s: any(leaf.path == f"decided_by.{s}" for r in rs.rules for leaf in rule_leaves(r))
            for s in rs.stages}
        self._outputs_of = {r: frozenset(o.path for o in r.outputs) for r in rs.rules}
        self._barriers: dict[tuple, int] = {}
        self._setter_stages: dict[str, set] = {}
        for r in rs.rules:
            for o in r.outputs:
                self._setter_stages.setdefault(o.path, set()).add(r.stage)
            self._setter_stages.setdefault(f"decided_by.{r.stage}", set()).add(r.stage)

    def splittable(self, path: str, values: Any) -> bool:
        """Whether the search may split on an output's possible values (a few plain
        values, and one stage sets it, so "its value" means one thing)."""
        cap = MAX_WINNER_SPLIT if path.startswith("decided_by.") else MAX_OUTPUT_SPLIT
        if values is ANY or len(values) > cap or len(values) < 2:
            return False
        if any(isinstance(v, Range) for v in values):
            return False
        return len(self._setter_stages.get(path, ())) == 1

    def split_for(self, view: View, path: str, values: Any) -> str | None:
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

    def verify(self, node: Node, k: int) -> tuple[str, str | None]:
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
                        isinstance(v, Range) for v in real[1]):
                    return "inconsistent", None
                state, need = "open", self.domain.min_need(need, real[2])
            else:
                state, need = "open", self.domain.min_need(need, real[1])
        return state, need

    def build_view(self, node: Node, k: int) -> View:
        if k == 0:
            return View(node, True, {}, None, None, None)
        base = node.view(k - 1)
        stage = self.rs.stages[k - 1]
        rules = self.sorted_rules[stage]
        live = set(self._partitions[stage].live(node.sigma))  # the others are false here
        cond = self.conditions.cond
        status = [cond(r.when)(base) if r in live else False for r in rules]
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
                v = self.conditions.value3(o.value, o.path, base)
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
            return View(node, True, res.ctx, None, None, None)
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
                value = output_value(r, path)
                values = union(values, self.conditions.value_set(value, path, base))
                if p_need is None:
                    if st is not True:
                        p_need = st
                    elif not isinstance(value, Literal):
                        v = self.conditions.value3(value, path, base)
                        p_need = v[1] if v[0] == "u" else None
                if safe[i]:
                    definite = True  # it matches, cannot fail: it sets the value
                    break
            if not definite:
                values = union(values, base.values_of(path))
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
                sets[path] = union(sets.get(path, frozenset()), frozenset([v]))
        if decision:
            sets["outcome.basis"] = ANY
            # Settled: both sides are within [0, deficiency], or the outcome is a review.
            amounts = node.amounts
            known = not isinstance(amounts, str)
            top = (to_num(amounts["amounts.deficiency"]) if known
                   else Fraction(facts_mod.MAX_MONEY) * 3)
            for path, review_value in (("outcome.borrower_owes", None),
                                       ("outcome.lender_absorbs", Decimal("0.00"))):
                values = sets.get(path, ANY)
                if values is ANY or None in values:
                    values = frozenset([Range(Fraction(0), top)])
                else:
                    values = frozenset(v if isinstance(v, Range) else v.quantize(CENT)
                                       for v in values)
                if review:
                    extra = (review_value if review_value is not None
                             else Range(top if known else 0, top))
                    values = values | {extra}
                sets[path] = values
        if decision and f"decided_by.{stage}" in node.sigma and winner is None:
            # No rule decided (or one failed): the outcome is a review.
            sets["outcome.bearer"] = frozenset(["review"])
            sets["outcome.action"] = frozenset(["refer"])
            sets["outcome.lender_absorbs"] = frozenset([Decimal("0.00")])
            sets["outcome.borrower_owes"] = frozenset([Range(top, top) if known
                                                       else Range(Fraction(0), top)])
        view = View(node, False, None, sets, need or base.need, base, needs)
        view.inconsistent = inconsistent or base.inconsistent
        return view

    def _cannot_fail(self, r: Rule, base: View) -> bool:
        """Whether every output of the rule computes (no undefined or negative amount)."""
        value3 = self.conditions.value3
        return all(isinstance(o.value, Literal) or value3(o.value, o.path, base)[0] == "v"
                   for o in r.outputs)

    def _compatible(self, r: Rule, i: int, rules: list[Rule], path: str, assumed: dict,
                    base: View) -> bool:
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
            values = self.conditions.value_set(output_value(r, q), q, base)
            if values is ANY or any(isinstance(x, Range) for x in values):
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

