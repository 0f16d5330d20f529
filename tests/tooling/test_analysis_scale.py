"""The analysis' partition by enumerated values (`analysis/partition.py`) changes its
cost, never its answer: on policies small enough to ask every rule everywhere, the
findings are the same with it and without it (`exhaustive=True`) — gaps, conflicts,
shadowed and unreachable rules, their rules, messages and example facts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.large_policy import write_policy
from service.policy.loader import load_ruleset
from service.tooling.analysis import analyse
from service.tooling.check import check_ruleset

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

# Equal priorities across states: AL/AK against AK/AZ overlap on AK (a conflict);
# CA against NV never match together (none); a contradiction (unreachable); a rule
# below a broader one (shadowed), and the mortgage default removed (a gap).
STATE_RULES = """\
  - id: pair-al-ak
    description: equal priority, overlapping states
    stage: bearer
    priority: 1500
    basis: "test"
    when:
      loan.type: mortgage
      jurisdiction: {in: [AL, AK]}
    then:
      preset: borrower_owes_all
      outcome.action: pursue_deficiency
  - id: pair-ak-az
    description: equal priority, overlapping states
    stage: bearer
    priority: 1500
    basis: "test"
    when:
      loan.type: mortgage
      jurisdiction: {in: [AK, AZ]}
    then:
      preset: barred
  - id: only-ca
    description: equal priority, one state
    stage: bearer
    priority: 1400
    basis: "test"
    when:
      jurisdiction: CA
      disposition.method: auction
    then:
      preset: borrower_owes_all
      outcome.action: pursue_deficiency
  - id: only-nv
    description: equal priority, another state
    stage: bearer
    priority: 1400
    basis: "test"
    when:
      jurisdiction: NV
      disposition.method: auction
    then:
      preset: barred
  - id: never
    description: two states at once
    stage: bearer
    priority: 1300
    basis: "test"
    when:
      jurisdiction: OH
      all:
        - jurisdiction: {in: [TX, NM]}
    then:
      preset: barred
  - id: below-al-ak
    description: narrower than pair-al-ak, lower priority
    stage: bearer
    priority: 1200
    basis: "test"
    when:
      loan.type: mortgage
      jurisdiction: AL
      disposition.method: {in: [auction, short_sale]}
    then:
      preset: barred
"""


def _findings(directory: Path, exhaustive: bool) -> list[tuple]:
    findings, _stats = analyse(load_ruleset(directory), time_budget=600.0,
                               exhaustive=exhaustive)
    assert not [f for f in findings if f.kind == "incomplete"], findings
    return [(f.kind, f.severity, f.stage, f.message, tuple(f.rules), repr(f.example))
            for f in findings]


def _state_policy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    bearer = target / "bearer.yaml"
    text = bearer.read_text()
    start = text.index("  - id: mortgage-recourse-default\n")
    end = text.find("\n  - id: ", start + 1)
    text = text[:start] + (text[end + 1:] if end >= 0 else "")
    bearer.write_text(text.rstrip("\n") + "\n" + STATE_RULES)
    return target


def test_state_rules_get_the_same_findings_with_and_without_the_partition(
        tmp_path: Path) -> None:
    policy = _state_policy(tmp_path)
    partitioned = _findings(policy, exhaustive=False)
    assert partitioned == _findings(policy, exhaustive=True)
    kinds = {(kind, rules) for kind, _s, _st, _m, rules, _e in partitioned}
    assert ("conflict", ("pair-al-ak", "pair-ak-az")) in kinds
    assert any(kind == "gap" for kind, _rules in kinds)
    assert not any(kind == "conflict" and "only-ca" in rules for kind, rules in kinds)
    assert ("unreachable", ("never",)) in kinds
    assert any(kind == "shadowed" and rules[0] == "below-al-ak" for kind, rules in kinds)


@pytest.mark.parametrize("size", [40, 120])
def test_a_generated_state_policy_gets_the_same_findings(tmp_path: Path, size: int) -> None:
    policy = tmp_path / f"policy-{size}"
    write_policy(size, policy, RULES)
    partitioned = _findings(policy, exhaustive=False)
    assert partitioned == _findings(policy, exhaustive=True)
    # Each state × method's 1- and 2-unit rules are below its 4-unit one.
    assert sum(kind == "shadowed" for kind, *_ in partitioned) >= size * 2 // 3 - 2


def test_a_check_run_apart_reports_what_a_check_in_process_reports(tmp_path: Path) -> None:
    # A server worker analyses a candidate in a process of its own (decisions go on
    # meanwhile); everything it reports, positions included, must come back intact.
    policy = _state_policy(tmp_path)
    here, summary, _ = check_ruleset(str(policy), time_budget=600.0)
    apart, summary_apart, _ = check_ruleset(str(policy), time_budget=600.0, isolated=True)
    assert [(str(p.pos), p.message, p.severity) for p in apart] == \
        [(str(p.pos), p.message, p.severity) for p in here]
    assert summary_apart["sha256"] == summary["sha256"]
    assert any(p.pos.line > 0 for p in apart)
