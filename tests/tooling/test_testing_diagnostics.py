"""`deficiency test`: mistakes in a test file get the rule files' diagnostics.

Each test writes a copy of the default policy whose tests/ holds one bad test file
(the policy's own cases are left out: they are tested in tests/policy) and runs the
test runner: every mistake is one line starting with `file:line:column` (of the
offending key or value), with a "did you mean" hint where one fits, and the run fails.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest

from service.tooling.testing import run_tests

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"

# A consumer car sold at auction in OH: deficiency 2,000.00, decided by
# consumer-goods-default (the seed example 2 of the default policy's tests).
CAR = """\
    as_of: 2026-07-01
    jurisdiction: OH
    loan: {id: DIAG-1, type: auto, unpaid_balance: "10000.00"}
    collateral: {kind: vehicle}
    disposition: {method: auction, date: 2026-06-01, proceeds: "8500.00", costs: {legal: "500.00"}}
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A private copy of the default policy, without its test cases."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    for path in (target / "tests").iterdir():
        path.unlink()
    return target


def write_tests(rules: Path, text: str) -> Path:
    path = rules / "tests" / "zz-diagnostics.yaml"
    path.write_text(text)
    return path


def pos(path: Path, token: str) -> str:
    """file:line:column of the one occurrence of `token` in the file."""
    text = path.read_text()
    assert text.count(token) == 1, token
    before = text[:text.index(token)]
    return f"{path}:{before.count(chr(10)) + 1}:{len(before) - before.rfind(chr(10))}"


def run(rules: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = run_tests(str(rules), out=out)
    return code, out.getvalue()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\S+:\d+:\d+: error: ", line)]


def test_an_unknown_fact_field_is_invalid_facts_at_its_key_with_a_hint(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car, investor misspelled"
    base: car
    facts: {{loan: {{invester: portfolio}}}}
    expect:
      outcome: {{bearer: borrower}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'invester')}: error: facts invalid: loan.invester: unknown field "
        "(hint: did you mean loan.investor?)"], text
    assert "0 passed, 1 failed (1 cases" in text, text


def test_an_unknown_expected_output_path_is_named_with_a_hint(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: credit reporting category misspelled"
    base: car
    expect:
      outcome: {{bearer: borrower}}
      credit_reporting: {{categry: open_until_paid, balance: "2000.00"}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'categry')}: error: credit_reporting.categry: unknown output path "
        "(hint: did you mean credit_reporting.category?)"], text
    assert "missing from the decision" not in text, text
    assert "0 passed, 1 failed (1 cases" in text, text


def test_a_misspelled_decided_by_says_no_such_rule_with_a_hint(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: decided_by misspelled"
    base: car
    decided_by: consumer-goods-defualt
    expect:
      outcome: {{bearer: borrower}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'consumer-goods-defualt')}: error: decided_by: no such rule: "
        "consumer-goods-defualt (hint: did you mean consumer-goods-default?)"], text
    assert "expected consumer-goods-defualt" not in text, text
    assert "0 passed, 1 failed (1 cases" in text, text


def test_a_misspelled_fixture_is_reported_at_base_and_the_case_fails(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: fixture misspelled"
    base: cra
    expect:
      outcome: {{bearer: borrower}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'cra')}: error: unknown fixture 'cra' (hint: did you mean car?)"], text
    # Not skipped: the case is counted, and failed.
    assert "0 passed, 1 failed (1 cases" in text, text


def test_a_rule_id_in_an_expected_trace_is_checked_too(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: trace names a rule that does not exist"
    base: car
    expect:
      trace: [{{stage: bearer, rule: consumer-goods-defalt}}]
""")
    code, text = run(rules)
    assert code == 1, text
    assert f"{pos(path, 'consumer-goods-defalt')}: error: trace[0].rule: no such rule: " \
           "consumer-goods-defalt (hint: did you mean consumer-goods-default?)" \
           in error_lines(text), text


def test_a_value_an_output_cannot_have_is_an_error_at_the_value(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: bearer misspelled"
    base: car
    decided_by: consumer-goods-default
    expect:
      outcome: {{bearer: borower}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'borower')}: error: outcome.bearer: 'borower' is not a value it can "
        "have (hint: did you mean borrower?)"], text


def test_a_mistake_in_a_fixture_is_reported_once_at_the_fixture(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}    negotiation: {{stat: in_progress}}
cases:
  - name: "car one"
    base: car
    expect: {{outcome: {{bearer: borrower}}}}
  - name: "car two"
    base: car
    facts: {{loan: {{type: auot}}}}
    expect: {{outcome: {{bearer: borrower}}}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'stat:')}: error: facts invalid: negotiation.stat: unknown field "
        "(hint: did you mean negotiation.state?)",
        f"{pos(path, 'auot')}: error: facts invalid: loan.type: not one of auto, mortgage, "
        "other_secured (hint: did you mean auto?)"], text
    assert "0 passed, 2 failed (2 cases" in text, text


def test_an_invalid_date_is_an_error_at_its_position_not_a_traceback(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car on a day that does not exist"
    base: car
    as_of: 2026-02-30
    expect: {{outcome: {{bearer: borrower}}}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, '2026-02-30')}: error: '2026-02-30' is not a valid date (day is out of "
        "range for month) (hint: write a date that exists, YYYY-MM-DD)"], text


def test_a_case_with_a_mistake_still_reports_its_real_differences(rules: Path) -> None:
    path = write_tests(rules, f"""\
fixtures:
  car:
{CAR}cases:
  - name: "car: wrong bearer and a misspelled path"
    base: car
    expect:
      outcome: {{bearer: lender, borower_owes: "2000.00"}}
""")
    code, text = run(rules)
    assert code == 1, text
    assert error_lines(text) == [
        f"{pos(path, 'borower_owes')}: error: outcome.borower_owes: unknown output path "
        "(hint: did you mean outcome.borrower_owes?)"], text
    assert "     outcome.bearer: expected 'lender', got 'borrower'" in text, text
    assert "missing from the decision" not in text, text


def test_the_cli_lists_all_four_mistakes_one_per_line_and_fails(rules: Path) -> None:
    from service.cli import main

    seed = rules / "tests" / "seed-examples.yaml"
    credit = rules / "tests" / "reporting-credit.yaml"
    shutil.copy(RULES / "tests" / seed.name, seed)
    shutil.copy(RULES / "tests" / credit.name, credit)
    text = seed.read_text()
    for old, new in (("investor: portfolio", "invester: portfolio"),
                     ("decided_by: consumer-goods-default", "decided_by: consumer-goods-defualt"),
                     ("category: open_until_paid", "categry: open_until_paid")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    seed.write_text(text)
    credit.write_text(credit.read_text().replace("base: car\n", "base: cra\n", 1))
    out = io.StringIO()
    assert main(["test", str(rules)], out) == 1
    text = out.getvalue()
    lines = text.splitlines()
    errors = [
        f"{pos(credit, 'cra')}: error: unknown fixture 'cra' (hint: did you mean car?)",
        f"{pos(seed, 'invester')}: error: facts invalid: loan.invester: unknown field "
        "(hint: did you mean loan.investor?)",
        f"{pos(seed, 'consumer-goods-defualt')}: error: decided_by: no such rule: "
        "consumer-goods-defualt (hint: did you mean consumer-goods-default?)",
        f"{pos(seed, 'categry')}: error: credit_reporting.categry: unknown output path "
        "(hint: did you mean credit_reporting.category?)",
    ]
    assert lines[:4] == errors, text  # first, in file order
    assert error_lines(text) == errors, text
    assert "4 errors in the test files (listed above)" in lines, text
    # The cases with a mistake are counted as failed; none gets a FAIL block repeating
    # its error, or the "missing" / "expected X, got Y" it replaces.
    assert re.search(r"^\d+ passed, \d+ failed \(\d+ cases", text, re.M), text
    assert "FAIL seed" not in text and "missing from the decision" not in text, text
    assert "expected consumer-goods-defualt" not in text, text


def test_the_expectable_paths_are_those_of_a_real_decision() -> None:
    """`expect` is checked against a table of the decision's fields: it must name every
    field the decision has, and nothing else."""
    from service.engine.decide import Decider
    from service.policy.loader import load_ruleset
    from service.tooling.testing import DECISION_PATHS

    decider = Decider(load_ruleset(str(RULES)), "reference")
    try:
        decision = decider.decide({
            "jurisdiction": "OH", "loan": {"id": "X", "type": "auto", "unpaid_balance": "10"},
            "collateral": {"kind": "vehicle"},
            "disposition": {"method": "auction", "date": "2026-01-01", "proceeds": "5"}})
    finally:
        decider.close()

    def paths(node: dict, parent: str = "") -> dict[str, str]:
        out = {}
        for key, value in node.items():
            path = f"{parent}.{key}" if parent else key
            if isinstance(value, dict):
                out[path] = "object"
                out.update(paths(value, path))
            else:
                out[path] = "list" if isinstance(value, list) else "value"
        return out

    assert paths(decision) == DECISION_PATHS
