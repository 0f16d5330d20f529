"""The default policy's own YAML test cases (rules/tests/), run as part of pytest.

`deficiency test` must pass with 100% rule coverage and every numeric threshold
tested on both sides and exactly at its boundary; and every case must pass with
the reference evaluator too, so the Rete (durable) matcher and the reference
matcher agree on every case.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from service.policy.loader import load_ruleset
from service.tooling.testing import load_cases, run_cases, run_tests

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

# Parts of a decision that differ from run to run.
VOLATILE = ("decision_id", "evaluated_at", "duration_ms")


def _failure_lines(report) -> str:
    return "\n".join(
        f"FAIL {r.case.name} ({r.case.file}:{r.case.line})\n" + "\n".join(
            f"     {f}" for f in r.failures)
        for r in report.failed)


def test_policy_cases_pass_with_full_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    code = run_tests("rules", out=out, min_coverage=100)
    text = out.getvalue()
    print(text)
    assert code == 0, text
    assert "rule coverage: " in text and "(100.0%)" in text, text
    assert "rules never applied" not in text, text
    assert "thresholds not tested on both sides" not in text, text
    assert "never tested exactly at the boundary" not in text, text


def test_every_case_passes_with_the_reference_evaluator() -> None:
    rs = load_ruleset(str(RULES))
    cases, errors = load_cases(RULES / "tests")
    assert not errors, "\n".join(errors)
    assert cases
    report = run_cases(rs, cases, matcher="reference")
    failed = [r.case.name for r in report.failed]
    assert not failed, _failure_lines(report)


def test_both_matchers_make_the_same_decisions() -> None:
    rs = load_ruleset(str(RULES))
    cases, errors = load_cases(RULES / "tests")
    assert not errors, "\n".join(errors)
    durable = run_cases(rs, cases, matcher="durable")
    reference = run_cases(rs, cases, matcher="reference")
    differ = []
    for d, r in zip(durable.results, reference.results, strict=True):
        if d.decision is None or r.decision is None:
            if (d.decision is None) != (r.decision is None):
                differ.append(d.case.name)
            continue
        a = {k: v for k, v in d.decision.items() if k not in VOLATILE}
        b = {k: v for k, v in r.decision.items() if k not in VOLATILE}
        if a != b:
            differ.append(d.case.name)
    assert not differ, "durable and reference matchers decide differently:\n" + "\n".join(differ)


def test_the_trace_shows_the_constants_a_rule_compared_with() -> None:
    """An examiner reads `judgment_limit_days[CA] = 90` in the trace, not only the dates."""
    from service.engine.decide import Decider
    from service.facts import validate_facts
    from service.policy.loader import load_ruleset

    decider = Decider(load_ruleset(Path(__file__).resolve().parents[2] / "rules"))
    try:
        decision = decider.decide_facts(validate_facts({
            "as_of": "2026-07-01", "jurisdiction": "CA",
            "loan": {"id": "X1", "type": "mortgage", "unpaid_balance": "250000.00"},
            "collateral": {"kind": "dwelling"},
            "disposition": {"method": "judicial_foreclosure", "date": "2025-06-01",
                            "proceeds": "200000.00"}}))
    finally:
        decider.close()
    entries = {e["rule"]: e for e in decision["trace"]}
    assert entries["time-barred"]["matched"]["judgment_limit_days[CA]"] == "90"
    assert entries["tax-1099-c"]["matched"]["cod_reporting_threshold"] == "600.00"
