"""Gaps: facts for which no rule of the deciding stage sets `outcome.bearer`, each
region confirmed "no rule decided" by the reference evaluator on one fact set."""

from __future__ import annotations

import time
from typing import Any

from ...policy.schema import NO_RULE_DECIDED
from .finding import Finding, out_of_budget
from .limits import GAP_LISTING_SECONDS, GAP_REGIONS_SHOWN, MAX_GAP_REGIONS, MAX_UNCONFIRMED
from .partition import Partition
from .regions import concretize, merge_regions, region_json, region_of, region_text
from .search import Analyzer, OutOfBudget
from .stages import Node


def find_gaps(an: Analyzer) -> list[Finding]:
    rs = an.rs
    stage = rs.decision_stage
    k = an.stage_index[stage]
    deciders = Partition([r for r in an.sorted_rules[stage] if r.sets("outcome.bearer")],
                         an.requirement)
    cond = an.conditions.cond
    an.representatives.set_scope(k, False)
    found: list[tuple[dict, dict]] = []
    unconfirmed = [0]
    started = time.monotonic()
    listing = [False]  # stopped listing regions before the search ended

    def goal(node: Node) -> Any:
        view = node.view(k)
        need = None
        for r in deciders.live(node.sigma):  # those not already false at this node
            st = cond(r.when)(view)
            if st is True:
                return False
            if st is not False:
                need = an.domain.min_need(need, st)
        return True if need is None else need

    def on_true(node: Node) -> str | None:
        concrete = concretize(an.domain, node.sigma)
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
    except OutOfBudget:
        if found:
            listing[0] = True  # a budget spent listing more regions only shortens the list
        else:
            incomplete = True
    findings = []
    if found:
        regions = merge_regions(an.domain, [region_of(an.domain, sigma) for sigma, _raw in found])
        truncated = listing[0] or incomplete
        count = f"{'at least ' if truncated else ''}{len(regions)}"
        message = (f"gap: no rule of stage {stage} sets outcome.bearer in {count} input "
                   f"region(s); such facts are decided 'review / refer: {NO_RULE_DECIDED}'")
        details = [f"region: {region_text(an.domain, r)}" for r in regions[:GAP_REGIONS_SHOWN]]
        if len(regions) > GAP_REGIONS_SHOWN:
            details.append(f"… and {len(regions) - GAP_REGIONS_SHOWN} more region(s)")
        findings.append(Finding(
            "gap", "error", stage, message, [], None,
            [region_json(an.domain, r) for r in regions], found[0][1], details, truncated))
    if incomplete:
        findings.append(out_of_budget(an, stage, "the search for gaps"))
    if unconfirmed[0] and not found:
        findings.append(Finding(
            "incomplete", "warning", stage,
            f"analysis incomplete: {unconfirmed[0]} candidate gap(s) in stage {stage} were "
            "not confirmed by the reference evaluator"))
    return findings
