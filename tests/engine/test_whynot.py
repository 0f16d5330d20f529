"""Why not: every rule that did not match, with the first condition that was false, the
value it saw, what the rule needs there and one line saying so."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from service import facts as facts_mod
from service.engine.decide import Decider
from service.engine.whynot import why_not
from service.policy import expr as ex
from service.policy.loader import load_ruleset
from service.policy.model import Ruleset
from service.tooling.testing import load_cases

from .test_differential import facts as default_policy_facts
from .test_differential import generated_case, generated_ruleset

RULES = Path(__file__).resolve().parents[2] / "rules"
FIELDS = ("stage", "rule", "priority", "path", "actual", "needs", "message")

#: A California purchase-money mortgage on a dwelling the borrower did not live in,
#: sold by the trustee (non-judicial foreclosure).
CA_PURCHASE_MONEY: dict[str, Any] = {
    "as_of": "2026-02-01",
    "jurisdiction": "CA",
    "loan": {"id": "WN-CA", "type": "mortgage", "unpaid_balance": "300000.00",
             "purchase_money": True},
    "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": False},
    "disposition": {"method": "judicial_foreclosure", "date": "2026-01-10",
                    "proceeds": "200000.00"},
}


@pytest.fixture(scope="module")
def rs() -> Ruleset:
    return load_ruleset(RULES)


@pytest.fixture(scope="module")
def decider(rs: Ruleset) -> Iterator[Decider]:
    d = Decider(rs, "durable")
    yield d
    d.close()


def facts(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Validated facts: `base` with dotted-path changes (`collateral__owner_occupied=True`);
    None removes the field."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return facts_mod.validate_facts(doc)


def entry(entries: list[dict], rule: str) -> dict:
    found = [e for e in entries if e["rule"] == rule]
    assert len(found) == 1, (rule, [e["rule"] for e in entries])
    return found[0]


def reported(entries: list[dict]) -> list[str]:
    return [e["rule"] for e in entries]


# ------------------------------------------------------------------ the messages


def test_ca_purchase_money_not_owner_occupied(rs: Ruleset) -> None:
    e = entry(why_not(rs, facts(CA_PURCHASE_MONEY)), "ca-580b-purchase-money")
    assert e == {
        "stage": "bearer", "rule": "ca-580b-purchase-money", "priority": 900,
        "path": "collateral.owner_occupied", "actual": False, "needs": "true",
        "message": "ca-580b-purchase-money: collateral.owner_occupied is false, "
                   "the rule needs true",
    }


def test_an_absent_optional_field_says_absent(rs: Ruleset) -> None:
    f = facts(CA_PURCHASE_MONEY, collateral__owner_occupied=True,
              collateral__dwelling_units=None)
    e = entry(why_not(rs, f), "ca-580b-purchase-money")
    assert (e["path"], e["actual"], e["needs"]) == ("collateral.dwelling_units", None, "<= 4")
    assert e["message"] == ("ca-580b-purchase-money: collateral.dwelling_units is absent, "
                            "the rule needs <= 4")


def test_a_matching_rule_is_not_reported(rs: Ruleset) -> None:
    f = facts(CA_PURCHASE_MONEY, collateral__owner_occupied=True)
    assert "ca-580b-purchase-money" not in reported(why_not(rs, f))


def test_an_expression_operand_is_shown_as_written_and_computed(rs: Ruleset) -> None:
    # CA allows 90 days from the sale on 2026-01-10: the time is not up on 2026-02-01.
    e = entry(why_not(rs, facts(CA_PURCHASE_MONEY)), "time-barred")
    assert e["path"] == "as_of" and e["actual"] == "2026-02-01"
    assert e["needs"] == "> disposition.date + judgment_limit_days[jurisdiction] (2026-04-10)"
    assert e["message"] == ("time-barred: as_of is 2026-02-01, the rule needs "
                            "> disposition.date + judgment_limit_days[jurisdiction] "
                            "(2026-04-10)")


def test_a_list_constant_is_named_with_its_entries(rs: Ruleset) -> None:
    f = facts(CA_PURCHASE_MONEY, jurisdiction="OH",
              disposition__method="non_judicial_foreclosure")
    e = entry(why_not(rs, f), "non-judicial-bar")
    assert e["needs"] == "one of non_judicial_bar_states (CA, OR, WA, AK, MT, MN)"
    assert e["message"] == ("non-judicial-bar: jurisdiction is OH, the rule needs one of "
                            "non_judicial_bar_states (CA, OR, WA, AK, MT, MN)")


def test_money_is_exact_decimal_text(rs: Ruleset) -> None:
    # An auto loan: the borrower owes 300.00, so the lender absorbs 0.00 - below the
    # 1099-C threshold.
    car = {"as_of": "2026-02-01", "jurisdiction": "OH",
           "loan": {"id": "WN-CAR", "type": "auto", "unpaid_balance": "10000.10"},
           "collateral": {"kind": "vehicle"},
           "disposition": {"method": "auction", "date": "2026-01-10", "proceeds": "9700.10"}}
    entries = why_not(rs, facts(car))
    e = entry(entries, "explain-canceled-debt")
    assert e["actual"] == "0.00"
    assert e["message"] == ("explain-canceled-debt: outcome.lender_absorbs is 0.00, the rule "
                            "needs >= cod_reporting_threshold (600.00)")
    e = entry(entries, "no-deficiency")
    assert e["message"] == "no-deficiency: amounts.deficiency is 300.00, the rule needs 0"


def test_not_names_the_value_that_held(rs: Ruleset) -> None:
    # ca-580b applies: non-recourse, so the canceled debt is not reported as income.
    f = facts(CA_PURCHASE_MONEY, collateral__owner_occupied=True)
    e = entry(why_not(rs, f), "tax-canceled-debt")
    assert (e["path"], e["actual"], e["needs"]) == ("vars.non_recourse", True, "not true")
    assert e["message"] == ("tax-canceled-debt: vars.non_recourse is true, "
                            "the rule needs it not to be")


def test_any_names_every_alternative(rs: Ruleset) -> None:
    e = entry(why_not(rs, facts(CA_PURCHASE_MONEY)), "note-form-982")
    assert e["path"] == "borrower.in_bankruptcy" and e["actual"] is False
    assert e["needs"] == "any of: borrower.in_bankruptcy: true; borrower.insolvent: true"
    assert e["message"] == ("note-form-982: none of: borrower.in_bankruptcy is false "
                            "(needs true); borrower.insolvent is false (needs true)")


def test_not_in_says_none_of(rs: Ruleset) -> None:
    f = facts(CA_PURCHASE_MONEY, negotiation__state="judgment_sought")
    e = entry(why_not(rs, f), "time-barred")
    assert e["message"] == ("time-barred: negotiation.state is judgment_sought, the rule "
                            "needs none of judgment_sought, judgment_obtained")


def test_a_later_stage_sees_the_earlier_stages_outputs(rs: Ruleset, decider: Decider) -> None:
    f = facts(CA_PURCHASE_MONEY)
    # A judicial sale with no fair value given: the recourse default decides.
    assert decider.decide_facts(f)["outcome"]["bearer"] == "borrower"
    entries = why_not(rs, f)
    e = entry(entries, "credit-paid-in-full")
    assert (e["stage"], e["path"], e["actual"]) == ("reporting", "outcome.bearer", "borrower")
    assert e["message"] == ("credit-paid-in-full: outcome.bearer is borrower, "
                            "the rule needs none")
    e = entry(entries, "explain-time-barred")
    assert e["actual"] == "mortgage-recourse-default"  # decided_by.bearer, set by stage 1


def test_entries_come_in_stage_order_then_priority_descending(rs: Ruleset) -> None:
    entries = why_not(rs, facts(CA_PURCHASE_MONEY))
    assert all(tuple(e) == FIELDS for e in entries)
    stage_index = {s: i for i, s in enumerate(rs.stages)}
    keys = [(stage_index[e["stage"]], -e["priority"], rs.rule(e["rule"]).order)
            for e in entries]
    assert keys == sorted(keys)


# ------------------------------------------------------------------ no rule forgotten


def _partition(rs: Ruleset, decider: Decider, f: dict) -> None:
    """Reported + matched (the durable engine's trace) = every rule, and never both."""
    entries = why_not(rs, f)
    by_rule = reported(entries)
    assert len(by_rule) == len(set(by_rule))
    matched = {t["rule"] for t in decider.decide_facts(f)["trace"]}
    assert not matched & set(by_rule)
    assert matched | set(by_rule) == {r.id for r in rs.rules}
    for e in entries:
        assert e["stage"] == rs.rule(e["rule"]).stage
        assert e["message"].startswith(e["rule"] + ": ")


def _shipped_cases() -> list[Any]:
    cases, problems = load_cases(RULES / "tests")
    assert problems == []
    return [c for c in cases if c.runnable]


def test_every_shipped_policy_case_reports_exactly_the_rules_that_did_not_match(
        rs: Ruleset, decider: Decider) -> None:
    cases = _shipped_cases()
    assert len(cases) > 20
    for case in cases:
        _partition(rs, decider, facts_mod.validate_facts(case.facts))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=default_policy_facts())
def test_generated_facts_report_exactly_the_rules_the_engine_did_not_match(
        rs: Ruleset, decider: Decider, raw: dict) -> None:
    _partition(rs, decider, facts_mod.validate_facts(raw))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=generated_case())
def test_generated_conditions_are_false_exactly_when_holds_says_so(tmp_path_factory,
                                                                   case) -> None:
    conds, sample = case
    gen = generated_ruleset(tmp_path_factory.mktemp("whynot"), conds)
    reference = Decider(gen, "reference")
    for raw in sample:
        f = facts_mod.validate_facts(raw)
        entries = why_not(gen, f)
        matched = {t["rule"] for t in reference.decide_facts(f)["trace"]}
        assert set(reported(entries)) == {r.id for r in gen.rules} - matched
        for e in entries:
            assert e["message"].startswith(e["rule"] + ": ") and e["needs"] and e["path"]


# ------------------------------------------------------------------ condition shapes


def _ruleset(tmp_path: Path, when: str) -> Ruleset:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(f"""\
        ruleset: shapes
        version: '1'
        stages: [s]
        constants: {{limits: {{CA: 90}}}}
        rules:
          - id: r
            description: one rule
            basis: test
            stage: s
            priority: 1
            when: {when}
            then: {{outcome.bearer: borrower, outcome.action: close}}
        """))
    return load_ruleset(tmp_path)


SHAPES = [
    # (when, changes to the facts, path, actual, needs, message after "r: ")
    ('{as_of: {gt: "disposition.date + limits[jurisdiction]"}}', {"jurisdiction": "OH"},
     "as_of", "2026-02-01",
     "> disposition.date + limits[jurisdiction] (cannot be computed: limits has no entry "
     "for jurisdiction OH)",
     "as_of is 2026-02-01, the rule needs > disposition.date + limits[jurisdiction] "
     "(cannot be computed: limits has no entry for jurisdiction OH)"),
    ("{collateral.fair_value: {gt: \"negotiation.settlement_amount + 0.01\"}}",
     {"collateral__fair_value": "5.00"}, "collateral.fair_value", "5.00",
     "> negotiation.settlement_amount + 0.01 (cannot be computed: "
     "negotiation.settlement_amount is absent)",
     "collateral.fair_value is 5.00, the rule needs > negotiation.settlement_amount + 0.01 "
     "(cannot be computed: negotiation.settlement_amount is absent)"),
    ("{collateral.dwelling_units: {ne: 1}}", {}, "collateral.dwelling_units", 1, "not 1",
     "collateral.dwelling_units is 1, the rule needs not 1"),
    ("{collateral.fair_value: {exists: true}}", {}, "collateral.fair_value", None, "a value",
     "collateral.fair_value is absent, the rule needs a value"),
    ("{collateral.dwelling_units: {missing: true}}", {}, "collateral.dwelling_units", 1,
     "no value", "collateral.dwelling_units is 1, the rule needs no value"),
    ("{not: {collateral.dwelling_units: {exists: true}}}", {}, "collateral.dwelling_units", 1,
     "no value", "collateral.dwelling_units is 1, the rule needs no value"),
    ("{not: {collateral.dwelling_units: {lte: 4}}}", {}, "collateral.dwelling_units", 1,
     "not <= 4", "collateral.dwelling_units is 1, the rule needs it not to be <= 4"),
    ("{not: {all: [{loan.type: mortgage}, {jurisdiction: CA}]}}", {}, "loan.type",
     "mortgage", "not (all of (loan.type: mortgage; jurisdiction: CA))",
     "all of (loan.type: mortgage; jurisdiction: CA) holds, the rule needs it not to"),
    ("{any: [{all: [{loan.type: mortgage}, {jurisdiction: OH}]}, {loan.type: auto}]}", {},
     "jurisdiction", "CA",
     "any of: all of (loan.type: mortgage; jurisdiction: OH); loan.type: auto",
     "none of: jurisdiction is CA (needs OH); loan.type is mortgage (needs auto)"),
    ("{all: [{loan.type: mortgage}, {any: [{jurisdiction: OH}, {not: {loan.type: mortgage}}]}]}",
     {}, "jurisdiction", "CA",
     "any of: jurisdiction: OH; not (loan.type: mortgage)",
     "none of: jurisdiction is CA (needs OH); loan.type is mortgage (needs not mortgage)"),
]


@pytest.mark.parametrize(("when", "changes", "path", "actual", "needs", "message"), SHAPES)
def test_condition_shapes(tmp_path: Path, when: str, changes: dict[str, Any], path: str,
                          actual: Any, needs: str, message: str) -> None:
    shapes = _ruleset(tmp_path, when)
    f = facts(CA_PURCHASE_MONEY, **changes)
    [e] = why_not(shapes, f)
    assert (e["path"], e["actual"], e["needs"], e["message"]) == (path, actual, needs,
                                                                  f"r: {message}")


@pytest.mark.parametrize(("text", "shown"), [
    ("a - (b + c)", "a - (b + c)"), ("a - b + c", "a - b + c"), ("(a+b)*2", "(a + b) * 2"),
    ("-(a - b)", "-(a - b)"), ("-a", "-a"), ("min(a, b + 1) * 0.5", "min(a, b + 1) * 0.5"),
    ("t[k] + 3", "t[k] + 3"), ("2 * (a - b)", "2 * (a - b)"), ("((a))", "a"),
])
def test_expression_text_reads_back_as_the_same_expression(text: str, shown: str) -> None:
    assert ex.to_text(ex.parse(text)) == shown
    assert ex.to_text(ex.parse(shown)) == shown
