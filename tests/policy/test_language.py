"""The rule language: what loads, what is refused (with file:line:column), what it means."""

from __future__ import annotations

import datetime
import time
from decimal import Decimal
from pathlib import Path

import pytest

from service.engine.decide import Decider
from service.policy import expr as ex
from service.policy.loader import PolicyError, load_ruleset

HEADER = "ruleset: t\nversion: '1'\nstages: [bearer, reporting]\n"
CAR = {
    "as_of": "2026-07-01", "jurisdiction": "OH",
    "loan": {"id": "CAR-1", "type": "auto", "unpaid_balance": "10000.00"},
    "collateral": {"kind": "vehicle"},
    "disposition": {"method": "auction", "date": "2026-06-01", "proceeds": "8500.00"},
}
DECIDE = """\
  - id: decide
    description: always decides
    stage: bearer
    priority: 1
    basis: test
    when: {loan.type: {in: [auto, mortgage, other_secured]}}
    then: {outcome.bearer: borrower, outcome.action: pursue_deficiency}
"""


def ruleset_dir(tmp_path: Path, rules: str, extra: str = "") -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "main.yaml").write_text(HEADER + extra + "rules:\n" + DECIDE + rules)
    return d


def problems(tmp_path: Path, rules: str, extra: str = "") -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_ruleset(ruleset_dir(tmp_path, rules, extra))
    return [str(p) for p in info.value.problems]


def rule(when: str, then: str = "{outcome.bearer: lender, outcome.action: write_off}",
         stage: str = "bearer", extra: str = "") -> str:
    return (f"  - id: r\n    description: d\n    stage: {stage}\n    priority: 5\n"
            f"    basis: b\n    when: {when}\n    then: {then}\n{extra}")


@pytest.mark.parametrize("rules, expected", [
    (rule("{loan.type: car}"), "main.yaml:17:23: error: loan.type: 'car' is not one of auto, "
                               "mortgage, other_secured"),
    (rule("{loan.tpye: auto}"), "unknown path 'loan.tpye' (hint: did you mean loan.type?)"),
    (rule("{loan.consumer: 1}"), "loan.consumer is a boolean; 1 is a number"),
    (rule("{collateral.dwelling_units: true}"), "True is a boolean"),
    (rule("{jurisdiction: {lt: CA}}"), "lt compares numbers and dates"),
    (rule("{amounts.deficiency: {gt: \"amounts.claim * 2\"}}"), "only + and - are allowed"),
    (rule("{amounts.deficiency: {gt: \"claim_limit\"}}"), "unknown path or constant"),
    (rule("{amounts.deficiency: {gt: \"amounts.claim / 2\"}}"), "division is not supported"),
    (rule("{amounts.deficiency: {gt: \"__import__('os')\"}}"), "unexpected character"),
    (rule("{amounts.deficiency: {gt: \"amounts.claim.__class__\"}}"), "unknown path"),
    (rule("{amounts.deficiency: {gt: \"amounts.claim ** 2\"}}"), "unexpected"),
    (rule("{disposition.date: {lt: \"2027-13-01\"}}"), "not a valid date"),
    (rule("{disposition.date: {lt: \"2027 - 1\"}}"), "a date is needed here"),
    (rule("{outcome.bearer: lender}"), "outcome.bearer is set in stage bearer, which does not "
                                       "run before stage bearer"),
    (rule("{loan.type: auto}", "{outcome.bearer: lender}", extra="    colour: red\n"),
     "unknown rule key 'colour'"),
    (rule("{loan.type: auto}", "{loan.type: auto}"), "loan.type is an input"),
    (rule("{loan.type: auto}", "{outcome.borrower_owes: \"amounts.deficiency * amounts.claim\"}"),
     "one side of * must be a number constant"),
    (rule("{loan.type: auto}", "{outcome.bearer: lender}", stage="reporting"),
     "outcome.bearer can only be set in stage bearer"),
    (rule("{loan.type: auto}", "{vars.x: amounts.deficiency}"), "is a path"),
    (rule("{loan.type: {between: [1, 2]}}"), "unknown operator 'between'"),
    (rule("{loan.type: auto}").replace("priority: 5", "priority: -1"), "priority must be"),
    (rule("{loan.type: auto}").replace("id: r", "id: decide"), "duplicate rule id 'decide'"),
    (rule("{loan.type: auto}").replace("    basis: b\n", ""), "decides the bearer but has no"),
])
def test_errors_name_the_position_and_the_problem(tmp_path, rules, expected):
    found = problems(tmp_path, rules)
    assert any(expected in p for p in found), found
    assert all(":" in p.split(" ")[0] for p in found)  # file:line:column first


def test_yaml_aliases_are_refused_so_alias_bombs_cannot_expand(tmp_path):
    bomb = "constants:\n  a: &a [x, x, x, x, x, x, x, x, x]\n  b: [*a, *a, *a, *a, *a, *a]\n"
    started = time.perf_counter()
    found = problems(tmp_path, "", extra=bomb)
    assert time.perf_counter() - started < 2
    assert any("aliases" in p for p in found)


def test_python_tags_are_not_constructed(tmp_path):
    found = problems(tmp_path, "", extra="constants:\n  x: !!python/object/apply:os.system [ls]\n")
    assert any("YAML" in p or "constant" in p for p in found)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    found = problems(tmp_path, rule("{loan.type: auto, loan.type: mortgage}"))
    assert any("duplicate key 'loan.type'" in p for p in found)


def test_decimal_constants_are_exact_and_dates_can_be_quoted(tmp_path):
    d = ruleset_dir(tmp_path, rule(
        "{disposition.date: {lt: \"2026-06-02\"}, amounts.deficiency: {gte: threshold}}",
        "{outcome.bearer: lender, outcome.action: write_off}"),
        extra="constants:\n  threshold: 1499.99\n")
    rs = load_ruleset(d)
    assert rs.numbers["threshold"] == Decimal("1499.99")
    decider = Decider(rs)
    try:
        assert decider.decide(CAR)["outcome"]["bearer"] == "lender"  # 1500.00 >= 1499.99
        late = {**CAR, "disposition": {**CAR["disposition"], "date": "2026-06-02"}}
        assert decider.decide(late)["outcome"]["bearer"] == "borrower"
    finally:
        decider.close()


def test_expressions_compute_exact_money_and_dates():
    tables = {"limit": {"CA": Decimal(90)}}
    numbers = {"half": Decimal("0.5")}
    ctx = {"amounts.claim": Decimal("10500.00"), "collateral.fair_value": Decimal("9000.10"),
           "disposition.date": datetime.date(2026, 6, 1), "jurisdiction": "CA"}

    def run(text: str):
        return ex.compile_expr(ex.parse(text), numbers.get, tables)(ctx)

    assert run("max(amounts.claim - collateral.fair_value, 0)") == Decimal("1499.90")
    assert run("amounts.claim * half") == Decimal("5250.000")
    assert run("disposition.date + limit[jurisdiction]") == datetime.date(2026, 8, 30)
    assert run("-(1 + 2) * 3") == Decimal(-9)
    with pytest.raises(ex.Undefined):
        run("negotiation.settlement_amount + 1")
    with pytest.raises(ex.Undefined):
        ex.compile_expr(ex.parse("limit[jurisdiction]"), numbers.get, tables)(
            {**ctx, "jurisdiction": "NV"})


@pytest.mark.parametrize("text", ["a" * 600, "(" * 40 + "1" + ")" * 40, "1 +" * 100 + "1",
                                  "min()", "lambda: 1", "x if y else z", "[1, 2]", "'text'"])
def test_hostile_expressions_are_refused_quickly(text):
    started = time.perf_counter()
    with pytest.raises(ex.ExprError):
        ex.parse(text)
    assert time.perf_counter() - started < 0.1


def test_absent_optional_fields_make_tests_false_and_not_true(tmp_path):
    d = ruleset_dir(tmp_path, rule("{collateral.dwelling_units: {lte: 4}}") + rule(
        "{not: {collateral.dwelling_units: {lte: 4}}}",
        "{outcome.bearer: shared, outcome.action: write_off}").replace("id: r", "id: r2")
        .replace("priority: 5", "priority: 4"))
    decider = Decider(load_ruleset(d))
    try:
        out = decider.decide(CAR)  # units not given
        assert out["outcome"]["bearer"] == "shared"
        assert [t["rule"] for t in out["trace"] if t["stage"] == "bearer"] == ["r2", "decide"]
    finally:
        decider.close()


def test_no_rule_deciding_means_review_never_an_exception(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "main.yaml").write_text(HEADER + "rules:\n" + (rule(
        "{jurisdiction: CA}")))
    decider = Decider(load_ruleset(d))
    try:
        out = decider.decide(CAR)
        assert (out["outcome"]["bearer"], out["outcome"]["action"], out["outcome"]["basis"]) == (
            "review", "refer", "no rule decided")
        assert out["outcome"]["borrower_owes"] == out["amounts"]["deficiency"]
    finally:
        decider.close()


def test_a_rule_whose_outcome_does_not_add_up_goes_to_review(tmp_path):
    d = ruleset_dir(tmp_path, rule("{loan.type: auto}", "{outcome.bearer: shared, "
                                   "outcome.action: write_off, outcome.borrower_owes: 5, "
                                   "outcome.lender_absorbs: 5}"))
    decider = Decider(load_ruleset(d))
    try:
        out = decider.decide(CAR)
        assert out["outcome"]["bearer"] == "review"
        assert "does not add up" in out["outcome"]["basis"]
    finally:
        decider.close()


@pytest.mark.parametrize("value, text", [
    ("0", "$0.00"), ("-0.00", "$0.00"), ("-0.004", "$0.00"), ("0.005", "$0.01"),
    ("-0.005", "-$0.01"), ("12.345", "$12.35"), ("-1234.565", "-$1,234.57"),
    ("1E+3", "$1,000.00"), ("999999999999.99", "$999,999,999,999.99"),
    ("2000.00", "$2,000.00"), ("1234567.891", "$1,234,567.89"),
])
def test_amounts_in_text_are_dollars_half_up_to_the_cent(value, text):
    from service.engine.resolver import _amount

    assert _amount(Decimal(value)) == text


def test_a_date_that_does_not_exist_is_an_error_at_its_position() -> None:
    from service.policy.yamlsafe import YamlError, load_yaml

    with pytest.raises(YamlError) as caught:
        load_yaml("constants:\n  cutoff: 2026-02-30\n", "rules/ruleset.yaml")
    assert str(caught.value.pos) == "rules/ruleset.yaml:2:11"
    assert "'2026-02-30' is not a valid date" in caught.value.message
