"""The hit policy: from a stage's matching rules to its outputs and its trace.

Per stage: for a scalar output the highest-priority matching rule that sets it
wins (ties broken by file order, and flagged); list outputs collect from every
matching rule in priority order. Every matching rule gets a trace entry,
applied or overridden. The stage that sets `outcome.bearer` is then settled:
no bearer means review/refer "no rule decided", and the amounts are made to
satisfy `borrower_owes + lender_absorbs == deficiency` or the decision goes to
review - never an exception.
"""

from __future__ import annotations

import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..amounts import dollars
from ..policy import expr as ex
from ..policy.model import Choice, Expr, Literal, Rule, Ruleset, Template, walk_leaves
from ..policy.schema import NO_RULE_DECIDED, OUTPUT_FIELDS
from .reference import holds

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


class OutputError(Exception):
    pass


def json_value(value: Any) -> Any:
    t = type(value)
    if t is str or t is bool or t is int or value is None:
        return value
    if t is Decimal:
        return str(value.quantize(CENT))
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def read_paths(rule: Rule, rs: Ruleset) -> tuple[str, ...]:
    """Paths a rule's condition compares (both sides), in first-seen order."""
    seen: dict[str, None] = {}
    for leaf in walk_leaves(rule.when):
        seen[leaf.path] = None
        if leaf.is_expr:
            for name in ex.refs(leaf.value):
                if rs.constant(name) is None:
                    seen[name] = None
    return tuple(seen)


def read_constants(rule: Rule, rs: Ruleset) -> tuple[tuple[str, str | None, Any], ...]:
    """The named constants a rule's condition compares with, in first-seen order:
    (name, None, its value) for a number or a date, (table, key path, the table) for
    an entry chosen by a fact (`judgment_limit_days[jurisdiction]`)."""
    seen: dict[tuple[str, str | None], Any] = {}
    for leaf in walk_leaves(rule.when):
        if not leaf.is_expr:
            continue
        for name in ex.refs(leaf.value):
            value = rs.constant(name)
            if value is not None:
                seen.setdefault((name, None), value)
        for lookup in ex.lookups(leaf.value):
            seen.setdefault((lookup.table, lookup.key), rs.tables[lookup.table])
    return tuple((name, key, value) for (name, key), value in seen.items())


def _shown_constant(value: Any) -> Any:
    """A constant as the trace shows it: a number as written (text, exact), a date ISO."""
    if isinstance(value, Decimal):
        return str(value)
    return json_value(value)


def _kind(path: str, rs: Ruleset) -> str:
    if path in OUTPUT_FIELDS:
        return OUTPUT_FIELDS[path][0]
    return rs.var_kinds.get(path, "string")


def _value_fn(value: Any, path: str, rs: Ruleset):
    """An output value as `fn(ctx) -> value` (raises OutputError), built once per rule."""
    if isinstance(value, Literal):
        constant = value.value
        return lambda ctx: constant
    if isinstance(value, Choice):
        when, then = value.when, _value_fn(value.then, path, rs)
        otherwise = _value_fn(value.otherwise, path, rs)
        return lambda ctx: then(ctx) if holds(when, ctx, rs) else otherwise(ctx)
    if isinstance(value, Expr):
        fn = ex.compile_expr(value.node, rs.constant, rs.tables)
        money = _kind(path, rs) in ("money", "decimal")
        text = value.text

        def computed(ctx: dict) -> Any:
            try:
                result = fn(ctx)
                if money and isinstance(result, Decimal):
                    result = result.quantize(CENT, rounding=ROUND_HALF_UP)
            except ex.Undefined as exc:
                raise OutputError(f"{path} = {text}: {exc} is absent") from None
            except ArithmeticError:  # decimal: too many digits to hold to the cent
                raise OutputError(f"{path} = {text} is out of range") from None
            if money and isinstance(result, Decimal) and result < 0:
                raise OutputError(f"{path} = {text} is negative ({result})")
            return result

        return computed
    raise TypeError(value)


def _template_fn(template: Template, rs: Ruleset):
    """A text line with placeholders as `fn(ctx) -> str`: one format string and one
    specialised closure per placeholder, built once per loaded ruleset."""
    texts: list[str] = []
    fns: list[Any] = []
    for i, part in enumerate(template.parts):
        if i % 2 == 0:
            texts.append(part.replace("{", "{{").replace("}", "}}"))
            continue
        texts.append("{}")
        fns.append(_path_text(part) if isinstance(part, str) else _placeholder(part, rs))
    fmt = "".join(texts).format
    if not fns:
        line = fmt()
        return lambda ctx: line
    if len(fns) == 1:
        only = fns[0]
        return lambda ctx: fmt(only(ctx))
    return lambda ctx: fmt(*[f(ctx) for f in fns])


def _path_text(path: str):
    return lambda ctx: _text(ctx.get(path))


def _placeholder(part: Any, rs: Ruleset):
    """`fn(ctx) -> str` for one `{expression}`; absent values read "(not given)"."""
    kind = part.kind
    node = part.node
    if isinstance(node, ex.Ref) and rs.constant(node.name) is None:
        name = node.name
        if kind == ex.AMOUNT:
            def amount_ref(ctx: dict) -> str:
                v = ctx.get(name)
                if v is None:
                    return "(not given)"
                try:
                    return _amount(v) if type(v) is Decimal else _format(v, kind)
                except ArithmeticError:
                    return "(out of range)"

            return amount_ref

        def ref(ctx: dict) -> str:
            v = ctx.get(name)
            return "(not given)" if v is None else _format(v, kind)

        return ref
    fn = ex.compile_expr(node, rs.constant, rs.tables)

    def computed(ctx: dict) -> str:
        try:
            return _format(fn(ctx), kind)
        except ex.Undefined:
            return "(not given)"
        except ArithmeticError:  # decimal: too many digits to print to the cent
            return "(out of range)"

    return computed


_amount = dollars


def _format(value: Any, kind: str) -> str:
    if isinstance(value, datetime.date):
        return value.isoformat()
    if kind == ex.AMOUNT and isinstance(value, Decimal):
        return _amount(value)
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value == value.to_integral_value() else str(value)
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return "(not given)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


_COMPUTED = object()


class RulePlan:
    """What resolving a matched rule needs, prepared once per loaded ruleset."""

    __slots__ = ("rule", "id", "priority", "rank", "reads", "constants", "outputs", "appends")

    def __init__(self, rule: Rule, rs: Ruleset) -> None:
        self.rule = rule
        self.id = rule.id
        self.priority = rule.priority
        self.rank = _rank(rule)
        self.reads = read_paths(rule, rs)
        self.constants = read_constants(rule, rs)
        # (path, fn(ctx) -> value, the value's JSON form when it is a constant)
        self.outputs = tuple(
            (o.path, _value_fn(o.value, o.path, rs),
             json_value(o.value.value) if isinstance(o.value, Literal) else _COMPUTED)
            for o in rule.outputs)
        self.appends = tuple((path, tuple(_template_fn(t, rs) for t in templates))
                             for path, templates in rule.appends)


def plan_rules(rs: Ruleset) -> dict[Rule, RulePlan]:
    return {r: RulePlan(r, rs) for r in rs.rules}


def _rank(rule: Rule) -> tuple[int, int]:
    return (-rule.priority, rule.order)


def _plan_rank(plan: RulePlan) -> tuple[int, int]:
    return plan.rank


class Resolution:
    """The evolving state of one decision: context (inputs + outputs), lists, trace."""

    __slots__ = ("ctx", "lists", "trace", "winners", "errors")

    def __init__(self, ctx: dict) -> None:
        self.ctx = ctx
        self.lists: dict[str, list[str]] = {"tax.notes": [], "explanation": []}
        self.trace: list[dict] = []
        self.winners: dict[str, str] = {}  # output path -> rule id that set it
        self.errors: list[str] = []


_UNSEEN = object()


def resolve_stage(rs: Ruleset, stage: str, matched: list[Rule], res: Resolution,
                  plans: dict[Rule, RulePlan]) -> None:
    ctx = res.ctx
    get = ctx.get
    # An `any` can make the engine fire a rule twice for one fact: count it once.
    ordered = [plans[r] for r in dict.fromkeys(matched)]
    if len(ordered) > 1:
        ordered.sort(key=_plan_rank)
    stage_winner: dict[str, tuple[RulePlan, Any]] = {}
    winner_get = stage_winner.get
    shown_values: dict[str, Any] = {}  # JSON form of the values read, for this stage's trace
    shown_get = shown_values.get
    trace_append = res.trace.append
    lists = res.lists
    top = None
    for plan in ordered:
        matched_values = {}
        for p in plan.reads:
            v = shown_get(p, _UNSEEN)
            if v is _UNSEEN:
                v = shown_values[p] = json_value(get(p))
            matched_values[p] = v
        for name, key, value in plan.constants:  # and the constants compared with
            if key is None:
                matched_values[name] = _shown_constant(value)
            else:
                entry = get(key)
                if entry in value:
                    matched_values[f"{name}[{entry}]"] = _shown_constant(value[entry])
        priority = plan.priority
        overridden_by = None
        applied = False
        conflict: list[str] | None = None
        shown: dict[str, Any] = {}
        needed = []  # (path, value, the holder it ties with, JSON of a constant)
        try:
            for path, fn, constant_json in plan.outputs:
                held = winner_get(path)
                if held is not None and held[0].priority > priority:
                    # Overridden by a higher rule: not computed, not shown as set.
                    if overridden_by is None:
                        overridden_by = held[0].id
                    continue
                needed.append((path, fn(ctx), held, constant_json))
        except OutputError as exc:
            # A rule applies whole or not at all.
            res.errors.append(f"rule {plan.id}: {exc}")
            trace_append({"stage": stage, "rule": plan.id, "priority": priority,
                          "matched": matched_values, "applied": False,
                          "overridden_by": overridden_by, "set": {}, "error": str(exc)})
            continue
        for path, value, held, constant_json in needed:
            if held is None:
                stage_winner[path] = (plan, value)
                shown[path] = json_value(value) if constant_json is _COMPUTED else constant_json
                applied = True
                continue
            if overridden_by is None:
                overridden_by = held[0].id
            if held[1] != value:  # equal priority, different value
                if conflict is None:
                    conflict = []
                conflict.append(path)
        for path, templates in plan.appends:
            lines = [render(ctx) for render in templates]
            lists[path].extend(lines)
            shown[path] = lines
            applied = True
        entry = {"stage": stage, "rule": plan.id, "priority": priority,
                 "matched": matched_values, "applied": applied,
                 "overridden_by": overridden_by, "set": shown}
        if conflict is not None:
            entry["conflict"] = conflict
        trace_append(entry)
        if top is None and applied:
            top = plan.id
    winners = res.winners
    for path, (plan, value) in stage_winner.items():
        ctx[path] = value
        winners[path] = plan.id
    if top is not None:
        ctx[f"decided_by.{stage}"] = top
    if stage == rs.decision_stage:
        settle_outcome(res, stage)


def settle_outcome(res: Resolution, stage: str) -> None:
    """Make the outcome whole: fallback, derived amounts and the invariant."""
    ctx = res.ctx
    deficiency = ctx["amounts.deficiency"]
    if ctx.get("outcome.bearer") is None or res.errors:
        reason = NO_RULE_DECIDED if not res.errors else "rule error: " + "; ".join(res.errors)
        _review(res, stage, reason)
        return
    owes = ctx.get("outcome.borrower_owes")
    absorbs = ctx.get("outcome.lender_absorbs")
    if owes is None and absorbs is None:
        owes, absorbs = deficiency, ZERO
    elif owes is None:
        owes = deficiency - absorbs
    elif absorbs is None:
        absorbs = deficiency - owes
    if owes < 0 or absorbs < 0 or owes + absorbs != deficiency:
        _review(res, stage, f"outcome of rule {res.winners.get('outcome.bearer')} does not add "
                f"up: borrower_owes {owes} + lender_absorbs {absorbs} != deficiency {deficiency}")
        return
    ctx["outcome.borrower_owes"] = owes.quantize(CENT)
    ctx["outcome.lender_absorbs"] = absorbs.quantize(CENT)
    if ctx.get("outcome.action") is None:
        _review(res, stage, f"rule {res.winners.get('outcome.bearer')} set no outcome.action")


def _review(res: Resolution, stage: str, reason: str) -> None:
    ctx = res.ctx
    ctx["outcome.bearer"] = "review"
    ctx["outcome.action"] = "refer"
    ctx["outcome.basis"] = reason
    # Until someone decides, nothing is forgiven: the balance stays owed.
    ctx["outcome.borrower_owes"] = ctx["amounts.deficiency"]
    ctx["outcome.lender_absorbs"] = ZERO
    ctx.pop(f"decided_by.{stage}", None)
    for path in ("outcome.bearer", "outcome.action", "outcome.basis", "outcome.borrower_owes",
                 "outcome.lender_absorbs"):
        res.winners.pop(path, None)
