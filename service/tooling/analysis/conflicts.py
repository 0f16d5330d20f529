"""Conflicts: two rules of equal priority in one stage that both match and set one
scalar output to different values, with no higher-priority rule setting it; each
confirmed by the reference evaluator on one fact set."""

from __future__ import annotations

import itertools
import time
from typing import Any

from ... import amounts as amounts_mod
from ...engine.decide import context
from ...engine.reference import holds
from ...engine.resolver import OutputError, Resolution, json_value, resolve_stage
from ...policy.model import Literal, Rule
from .finding import Finding, out_of_budget
from .limits import MAX_UNCONFIRMED
from .partition import Partition, disjoint
from .regions import concretize
from .rules import output_value, scalar_paths
from .search import Analyzer, OutOfBudget
from .stages import Node


def find_conflicts(an: Analyzer) -> list[Finding]:
    findings: list[Finding] = []
    for stage in an.rs.stages:
        k = an.stage_index[stage]
        rules = an.sorted_rules[stage]
        for r1, r2 in itertools.combinations(rules, 2):
            if r1.priority != r2.priority or disjoint(an.requirement.of(r1),
                                                      an.requirement.of(r2)):
                continue  # a tie needs equal priorities, and facts both rules match
            common = [p for p in scalar_paths(r1) if r2.sets(p)]
            common = [p for p in common
                      if not (isinstance(output_value(r1, p), Literal)
                              and isinstance(output_value(r2, p), Literal)
                              and output_value(r1, p).value == output_value(r2, p).value)]
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
    both = {**an.requirement.of(r1), **an.requirement.of(r2)}  # (not disjoint: see above)
    for path in set(an.requirement.of(r1)) & set(an.requirement.of(r2)):
        both[path] = an.requirement.of(r1)[path] & an.requirement.of(r2)[path]
    higher = {p: Partition([h for h in an.sorted_rules[stage]
                            if h.priority > r1.priority and h.sets(p)
                            and not disjoint(both, an.requirement.of(h))], an.requirement)
              for p in paths}
    c1, c2 = an.conditions.cond(r1.when), an.conditions.cond(r2.when)
    an.representatives.set_scope(k, True)
    result: list = []
    unconfirmed = [0]

    def goal(node: Node) -> Any:
        view = node.view(k)
        need = None
        for c in (c1, c2):
            st = c(view)
            if st is False:
                return False
            if st is not True:
                need = an.domain.min_need(need, st)
        open_path = False
        first_need = need  # split first on what the two rules read
        for p in paths:
            p_need = None
            masked = False
            for h in higher[p].live(node.sigma):  # those not already false at this node
                sh = an.conditions.cond(h.when)(view)
                if sh is True:
                    masked = True
                    break
                if sh is not False and p_need is None:
                    p_need = sh  # the highest undecided rule that could mask the tie
            if masked:
                continue
            v1 = an.conditions.value3(output_value(r1, p), p, view)
            v2 = an.conditions.value3(output_value(r2, p), p, view)
            if v1[0] == "err" or v2[0] == "err":
                continue  # the rule fails instead of setting a value: no tie on p
            if v1[0] == "v" and v2[0] == "v":
                if v1[1] == v2[1]:
                    continue
                if need is None and p_need is None:
                    return True
            for v in (v1, v2):
                if v[0] == "u":
                    p_need = an.domain.min_need(p_need, v[1])
            open_path = True
            need = an.domain.min_need(need, p_need)
        if not open_path:
            return False
        return first_need or need or False

    def on_true(node: Node) -> str | None:
        found = confirm(node)
        if found is None:
            unconfirmed[0] += 1
            return "stop" if unconfirmed[0] >= MAX_UNCONFIRMED else None
        result.append(found)
        return "stop"

    def confirm(node: Node) -> tuple | None:
        concrete = concretize(an.domain, node.sigma)
        if concrete is None:
            return None
        raw, facts = concrete
        ctx = _stage_context(an, facts, stage)
        if not (holds(r1.when, ctx, an.rs) and holds(r2.when, ctx, an.rs)):
            return None
        differing = []
        for p in paths:
            if any(holds(h.when, ctx, an.rs) for h in higher[p].rules):
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
    except OutOfBudget:
        return out_of_budget(an, stage, f"the conflict check of {r1.id} and {r2.id}", rule=r2)
    if not result:
        if unconfirmed[0]:
            return Finding("incomplete", "warning", stage,
                           f"analysis incomplete: {unconfirmed[0]} candidate conflict(s) of "
                           f"{r1.id} and {r2.id} were not confirmed by the reference evaluator",
                           [r1.id, r2.id], r2.pos)
        return None
    raw, differing = result[0]
    # The later rule first: it is usually the one just written.
    shown = "; ".join(f"{p}: {json_value(v2)!r} vs {json_value(v1)!r}"
                      for p, v1, v2 in differing)
    paths = ", ".join(p for p, _a, _b in differing)
    message = (f"conflict: rule {r2.id} ({r2.pos}) and rule {r1.id} ({r1.pos}) have the same "
               f"priority ({r1.priority}, stage {stage}) and both match the example facts, but "
               f"set {paths} differently ({shown}); only {r1.id}, earlier in the files, "
               f"applies. Give one of them another priority, or make their conditions "
               "exclusive")
    return Finding("conflict", "error", stage, message, [r1.id, r2.id], r2.pos, [], raw,
                   [f"deciding the example facts, the service matches both rules ({paths} "
                    "differ)"])


def _stage_context(an: Analyzer, facts: dict, stage: str) -> dict:
    """The reference context the rules of `stage` see (earlier stages resolved)."""
    amounts = amounts_mod.compute_amounts(facts)
    res = Resolution(context(facts, amounts))
    for s in an.rs.stages:
        if s == stage:
            break
        matched = [r for r in an.rs.stage_rules(s) if holds(r.when, res.ctx, an.rs)]
        resolve_stage(an.rs, s, matched, res, an.plans)
    return dict(res.ctx)
