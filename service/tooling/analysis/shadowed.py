"""Shadowed rules: a rule that never applies because rules resolved before it set
every output it sets wherever it matches; unreachable when it can never match.
Both are proofs over the representative values (warnings, no example)."""

from __future__ import annotations

import time
from typing import Any

from ...policy.model import Rule
from .finding import Finding, out_of_budget
from .limits import MAX_UNCONFIRMED
from .partition import Partition
from .regions import concretize
from .rules import scalar_paths
from .search import Analyzer, OutOfBudget
from .stages import Node


def _pick_need(an: Analyzer, own: str | None, others: list[str]) -> str | None:
    """What to split on to prove or refute that competitors cover a rule: a path both
    the rule and a competitor wait on; else the enum path most competitors wait on
    (one split may make one of them true everywhere); else the rule's own; else the
    highest competitor's."""
    if own is not None and own in others:
        return own
    counts: dict[str, int] = {}
    for need in others:
        var = an.domain.vars.get(need)
        if var is not None and var.finite:
            counts[need] = counts.get(need, 0) + 1
    if counts:
        return max(counts, key=lambda p: (counts[p], -an.domain.order.get(p, 0)))
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
    # Only the rules resolved before it that can match where it matches can shadow it.
    rank = an.rank[rule]
    before = [h for h in an.partitions[stage].compatible(an.requirement.of(rule))
              if an.rank[h] < rank]
    outs = [(p, Partition([h for h in before if h.sets(p)], an.requirement))
            for p in scalar_paths(rule)]
    c = an.conditions.cond(rule.when)
    an.representatives.set_scope(k, False)
    shadowers: dict[str, Rule] = {}
    witness: list = []
    unconfirmed = [0]

    def goal(node: Node) -> Any:
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
            for h in hs.live(node.sigma):  # those not already false at this node
                sh = an.conditions.cond(h.when)(view)
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

    def on_true(node: Node) -> str | None:
        concrete = concretize(an.domain, node.sigma)
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
    except OutOfBudget:
        return out_of_budget(an, stage, f"the shadowing check of {rule.id}", rule=rule)
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
