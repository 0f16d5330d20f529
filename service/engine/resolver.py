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

from ..policy import expr as ex
from ..policy.model import Choice, Expr, Literal, Rule, Ruleset, Template, walk_leaves
from ..policy.schema import NO_RULE_DECIDED, OUTPUT_FIELDS
from .reference import getter, holds

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


class OutputError(Exception):
    pass


def json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
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


def _kind(path: str, rs: Ruleset) -> str:
    if path in OUTPUT_FIELDS:
        return OUTPUT_FIELDS[path][0]
    return rs.var_kinds.get(path, "string")


def compute(value: Any, path: str, ctx: dict, rs: Ruleset) -> Any:
    if isinstance(value, Literal):
        return value.value
    if isinstance(value, Choice):
        branch = value.then if holds(value.when, ctx, rs) else value.otherwise
        return compute(branch, path, ctx, rs)
    if isinstance(value, Expr):
        try:
            result = ex.evaluate(value.node, getter(ctx, rs), rs.tables)
        except ex.Undefined as exc:
            raise OutputError(f"{path} = {value.text}: {exc} is absent") from None
        if isinstance(result, Decimal) and _kind(path, rs) in ("money", "decimal"):
            result = result.quantize(CENT, rounding=ROUND_HALF_UP)
            if result < 0:
                raise OutputError(f"{path} = {value.text} is negative ({result})")
        return result
    raise TypeError(value)


def render(template: Template, ctx: dict, rs: Ruleset) -> str:
    out = []
    for i, part in enumerate(template.parts):
        if i % 2 == 0:
            out.append(part)
        elif isinstance(part, str):
            out.append(str(ctx.get(part, "")))
        else:
            try:
                value = ex.evaluate(part.node, getter(ctx, rs), rs.tables)
            except ex.Undefined:
                out.append("(not given)")
                continue
            out.append(_format(value, part.kind))
    return "".join(out)


def _format(value: Any, kind: str) -> str:
    if isinstance(value, datetime.date):
        return value.isoformat()
    if kind == ex.AMOUNT and isinstance(value, Decimal):
        q = value.quantize(CENT, rounding=ROUND_HALF_UP)
        return f"-${-q:,.2f}" if q < 0 else f"${q:,.2f}"
    return str(value)


class Resolution:
    """The evolving state of one decision: context (inputs + outputs), lists, trace."""

    __slots__ = ("ctx", "lists", "trace", "winners", "errors")

    def __init__(self, ctx: dict) -> None:
        self.ctx = ctx
        self.lists: dict[str, list[str]] = {"tax.notes": [], "explanation": []}
        self.trace: list[dict] = []
        self.winners: dict[str, str] = {}  # output path -> rule id that set it
        self.errors: list[str] = []


def resolve_stage(rs: Ruleset, stage: str, matched: list[Rule], res: Resolution,
                  read_cache: dict[str, tuple[str, ...]]) -> None:
    ctx = res.ctx
    ordered = sorted(set(matched), key=lambda r: (-r.priority, r.order))
    stage_winner: dict[str, tuple[Rule, Any]] = {}
    entries = []
    for rule in ordered:
        computed: dict[str, Any] = {}
        error = None
        for out in rule.outputs:
            try:
                computed[out.path] = compute(out.value, out.path, ctx, rs)
            except OutputError as exc:
                error = str(exc)
                res.errors.append(f"rule {rule.id}: {exc}")
                break
        entry = {
            "stage": stage,
            "rule": rule.id,
            "priority": rule.priority,
            "matched": {p: json_value(ctx.get(p)) for p in read_cache[rule.id]},
            "applied": False,
            "overridden_by": None,
            "set": {},
        }
        if error:
            entry["error"] = error
            entries.append(entry)
            continue
        for path, value in computed.items():
            held = stage_winner.get(path)
            if held is None:
                stage_winner[path] = (rule, value)
                entry["set"][path] = json_value(value)
                entry["applied"] = True
            else:
                winner, winning_value = held
                if entry["overridden_by"] is None:
                    entry["overridden_by"] = winner.id
                if winner.priority == rule.priority and winning_value != value:
                    entry.setdefault("conflict", []).append(path)
        for path, templates in rule.appends:
            lines = [render(t, ctx, rs) for t in templates]
            res.lists[path].extend(lines)
            entry["set"][path] = lines
            entry["applied"] = True
        entries.append(entry)
    for path, (rule, value) in stage_winner.items():
        ctx[path] = value
        res.winners[path] = rule.id
    top = next((e["rule"] for e in entries if e["applied"]), None)
    if top is not None:
        ctx[f"decided_by.{stage}"] = top
    res.trace.extend(entries)
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
