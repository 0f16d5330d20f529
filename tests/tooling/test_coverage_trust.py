"""`deficiency test` coverage a reviewer can trust: per constant entry, per table entry.

The trial that found it: adding `OK: 90` to `judgment_limit_days` kept 100% coverage
with no Oklahoma case at all, and with Oklahoma cases none exactly at day 90 the
`time-barred` boundary was still reported as tested (CA's, AZ's and NY's 90-day cases
counted for it). Each test copies the default policy (its own cases included), adds
OK to the table, and runs the test runner as `deficiency test rules` does.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from service.tooling.testing import run_tests

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

OK_ENTRY = "judgment_limit_days[OK] (used by time-barred)"
OK_DEADLINE_ENTRY = "judgment_limit_days[OK] (used by deficiency-judgment-deadline)"
OK_BOUNDARY = "time-barred: as_of gt ({rules}:182:19) for judgment_limit_days[OK]"

# A recourse judicial foreclosure in OK, sold 2026-01-15 (day 90 is 2026-04-15).
OK_CASE = """\
  - name: "OK {label}"
    as_of: {as_of}
    facts:
      jurisdiction: OK
      loan: {{id: OK-1, type: mortgage, unpaid_balance: "200000.00"}}
      collateral: {{kind: dwelling, dwelling_units: 1}}
      disposition: {{method: judicial_foreclosure, date: 2026-01-15, proceeds: "150000.00"}}
      negotiation: {{state: {state}}}
    decided_by: {rule}
    expect:
      outcome: {{bearer: {bearer}, borrower_owes: "{owes}", deadline: {deadline}}}
"""
WITHIN = dict(label="within the limit", as_of="2026-02-01", state="none",
              rule="mortgage-recourse-default", bearer="borrower", owes="50000.00",
              deadline='"2026-04-15"')
AT_DAY_90 = dict(WITHIN, label="exactly at day 90", as_of="2026-04-15")
AT_DAY_91 = dict(label="day 91: time-barred", as_of="2026-04-16", state="none",
                 rule="time-barred", bearer="lender", owes="0.00", deadline="null")
JUDGMENT_SOUGHT = dict(WITHIN, label="judgment sought", state="judgment_sought",
                       deadline="null")


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A copy of the default policy, its cases included, with `OK: 90` added."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    ruleset = target / "ruleset.yaml"
    text = ruleset.read_text()
    assert "    TX: 730\n" in text
    ruleset.write_text(text.replace("    TX: 730\n", "    TX: 730\n    OK: 90\n"))
    return target


def _add_cases(rules: Path, *cases: dict) -> None:
    (rules / "tests" / "oklahoma.yaml").write_text(
        "cases:\n" + "\n".join(OK_CASE.format(**c) for c in cases))


def _run(rules: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = run_tests(str(rules), out=out, min_coverage=100)
    return code, out.getvalue()


def _section(text: str, heading: str) -> list[str]:
    """The indented lines under a heading line of the report."""
    lines = text.splitlines()
    if heading not in lines:
        return []
    items = []
    for line in lines[lines.index(heading) + 1:]:
        if not line.startswith("  "):
            break
        items.append(line.strip())
    return items


def _boundary(rules: Path) -> str:
    return OK_BOUNDARY.format(rules=rules / "bearer.yaml")


def test_a_table_entry_without_a_case_is_never_exercised_and_fails_min_coverage(
        rules: Path) -> None:
    code, text = _run(rules)
    assert "0 failed" in text, text
    assert "rule coverage: 50/50 rules applied (100.0%)" in text, text
    assert "constant entry coverage: 41/43 entries (95.3%)" in text, text
    assert _section(text, "constant entries never exercised:") == [
        OK_ENTRY, OK_DEADLINE_ENTRY], text
    assert "constant entry coverage 95.3% is below --min-coverage 100" in text, text
    assert code == 1, text
    # no OK case: its boundary is untested too, on neither side
    assert _boundary(rules) in _section(text, "thresholds not tested on both sides:"), text
    assert _boundary(rules) in _section(
        text, "thresholds never tested exactly at the boundary:"), text


def test_a_case_that_does_not_reach_the_rule_does_not_cover_the_entry(rules: Path) -> None:
    _add_cases(rules, JUDGMENT_SOUGHT)  # time-barred needs no judgment sought
    code, text = _run(rules)
    assert "0 failed" in text, text
    assert _section(text, "constant entries never exercised:") == [
        OK_ENTRY, OK_DEADLINE_ENTRY], text
    assert code == 1, text


def test_other_states_90_day_cases_do_not_test_ok_boundary(rules: Path) -> None:
    _add_cases(rules, WITHIN)
    code, text = _run(rules)
    assert "0 failed" in text, text
    assert "constant entry coverage: 43/43 entries (100.0%)" in text, text
    assert "constant entries never exercised" not in text, text
    assert code == 0, text  # threshold findings are reported, not failed on
    assert _section(text, "thresholds not tested on both sides:") == [_boundary(rules)], text
    assert _section(text, "thresholds never tested exactly at the boundary:") == [
        _boundary(rules)], text
    # CA's boundary is tested by the policy's own cases, and is reported apart from OK's
    assert "for judgment_limit_days[CA]" not in text, text


def test_ok_cases_at_the_boundary_and_either_side_pass(rules: Path) -> None:
    _add_cases(rules, WITHIN, AT_DAY_90, AT_DAY_91)
    code, text = _run(rules)
    assert "0 failed" in text, text
    assert "constant entry coverage: 43/43 entries (100.0%)" in text, text
    assert "thresholds not tested on both sides" not in text, text
    assert "never tested exactly at the boundary" not in text, text
    assert code == 0, text


def test_a_list_constant_value_without_a_case_is_never_exercised(rules: Path) -> None:
    ruleset = rules / "ruleset.yaml"
    ruleset.write_text(ruleset.read_text().replace(
        "non_judicial_bar_states: [CA, OR, WA, AK, MT, MN]",
        "non_judicial_bar_states: [CA, OR, WA, AK, MT, MN, ID]"))
    _add_cases(rules, WITHIN, AT_DAY_90, AT_DAY_91)
    code, text = _run(rules)
    assert _section(text, "constant entries never exercised:") == [
        "non_judicial_bar_states[ID] (used by non-judicial-bar)"], text
    assert code == 1, text
