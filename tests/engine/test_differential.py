"""durable-rules against the plain-Python reference evaluator, on generated facts.

The engine is quirky and unmaintained; this is how we know the compiler and the
engine agree with the rule semantics: same matching rules in every stage, same
decision, for thousands of facts across every enum, boundary and jurisdiction.
"""

from __future__ import annotations

import datetime
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from service import facts as facts_mod
from service.engine.decide import Decider
from service.engine.runtime import EngineLimit
from service.policy.loader import load_ruleset
from service.policy.model import Ruleset

RULES = Path(__file__).resolve().parents[2] / "rules"
VOLATILE = ("decision_id", "evaluated_at", "duration_ms")

POLICY_STATES = ["CA", "AZ", "NV", "NY", "NC", "FL", "TX", "OR", "WA", "AK", "MT", "MN", "OH"]
# Offsets around every time limit of the policy (90, 180, 365, 730 days).
DAY_OFFSETS = [0, 1, 89, 90, 91, 179, 180, 181, 364, 365, 366, 729, 730, 731, 2000]
AMOUNTS = ["0.00", "0.01", "1.00", "599.99", "600.00", "600.01", "2000.00", "8500.00",
           "10000.00", "50000.00", "250000.00", "999999999999.99"]


def money() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(AMOUNTS),
                     st.integers(0, 30_000_000).map(lambda c: f"{Decimal(c) / 100:.2f}"))


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


@st.composite
def facts(draw: st.DrawFn) -> dict:
    sale = datetime.date(2025, 1, 1) + datetime.timedelta(days=draw(st.integers(0, 500)))
    as_of = sale + datetime.timedelta(days=draw(st.sampled_from(DAY_OFFSETS)))
    balance = draw(money())
    proceeds = draw(st.one_of(money(), st.just(balance)))
    loan = {
        "id": draw(st.text("ABC123-", min_size=1, max_size=12)),
        "type": draw(st.sampled_from(facts_mod.FACT_ENUMS["loan.type"])),
        "consumer": draw(st.booleans()),
        "unpaid_balance": balance,
        "accrued_interest": draw(st.sampled_from(["0.00", "12.34", "500.00"])),
        "purchase_money": draw(st.booleans()),
        "home_equity": draw(st.booleans()),
        "investor": draw(st.sampled_from(facts_mod.FACT_ENUMS["loan.investor"])),
    }
    collateral: dict = {
        "kind": draw(st.sampled_from(facts_mod.FACT_ENUMS["collateral.kind"])),
        "owner_occupied": draw(st.booleans()),
    }
    units = draw(maybe(st.sampled_from([1, 2, 3, 4, 5, 1000])))
    if units is not None:
        collateral["dwelling_units"] = units
    acres = draw(maybe(st.sampled_from(["0.00", "2.49", "2.50", "2.51", "40.00"])))
    if acres is not None:
        collateral["acres"] = acres
    fair = draw(maybe(st.one_of(money(), st.just(proceeds), st.just(balance))))
    if fair is not None:
        collateral["fair_value"] = fair
    state = draw(st.sampled_from(facts_mod.FACT_ENUMS["negotiation.state"]))
    negotiation: dict = {
        "state": state,
        "deficiency_waived": draw(st.booleans()),
        "deficiency_reserved": draw(st.booleans()),
        "borrower_contribution": draw(st.one_of(st.just("0.00"), money())),
        "third_party_agent": draw(st.booleans()),
    }
    if state == "settlement_agreed" or draw(st.booleans()):
        negotiation["settlement_amount"] = draw(money())
    return {
        "as_of": as_of.isoformat(),
        "jurisdiction": draw(st.one_of(st.sampled_from(POLICY_STATES),
                                       st.sampled_from(facts_mod.FACT_ENUMS["jurisdiction"]))),
        "loan": loan,
        "collateral": collateral,
        "disposition": {
            "method": draw(st.sampled_from(facts_mod.FACT_ENUMS["disposition.method"])),
            "date": sale.isoformat(),
            "proceeds": proceeds,
            "costs": {"legal": draw(st.sampled_from(["0.00", "500.00"])),
                      "storage": draw(st.sampled_from(["0.00", "75.50"]))},
            "credits": draw(st.sampled_from(["0.00", "100.00"])),
            "notice_sent": draw(st.booleans()),
            "commercially_reasonable": draw(st.booleans()),
        },
        "negotiation": negotiation,
        "borrower": {"in_bankruptcy": draw(st.booleans()), "insolvent": draw(st.booleans())},
    }


@pytest.fixture(scope="module")
def deciders():
    rs = load_ruleset(RULES)
    engine, reference = Decider(rs, "durable"), Decider(rs, "reference")
    yield engine, reference
    engine.close()


def stable(decision: dict) -> dict:
    return {k: v for k, v in decision.items() if k not in VOLATILE}


@settings(max_examples=5000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=facts())
def test_engine_agrees_with_reference_on_default_policy(deciders, raw):
    engine, reference = deciders
    f = facts_mod.validate_facts(raw)
    got, want = engine.decide_facts(f), reference.decide_facts(f)
    # same matching rules in every stage, in the same order, with the same values compared
    assert got["trace"] == want["trace"]
    assert stable(got) == stable(want)
    o = got["outcome"]
    assert Decimal(o["borrower_owes"]) + Decimal(o["lender_absorbs"]) == Decimal(
        got["amounts"]["deficiency"])


# --- random conditions: the compiler's handling of not/any/all and absent values ---------

PATHS = {
    "collateral.dwelling_units": st.sampled_from([1, 2, 3, 4, 5]),
    "collateral.fair_value": st.sampled_from(["0.00", "100.00", "100.01", "250.00"]),
    "negotiation.settlement_amount": st.sampled_from(["0.00", "99.99", "100.00", "250.00"]),
    "collateral.acres": st.sampled_from(["1.00", "2.50", "3.00"]),
}
LEAVES = [
    "collateral.dwelling_units: {lte: 4}",
    "collateral.dwelling_units: 2",
    "collateral.dwelling_units: {ne: 3}",
    "collateral.dwelling_units: {in: [1, 5]}",
    "collateral.dwelling_units: {not_in: [2, 3]}",
    "collateral.fair_value: {gt: disposition.proceeds}",
    "collateral.fair_value: {lte: \"negotiation.settlement_amount + 0.01\"}",
    "collateral.fair_value: {exists: true}",
    "negotiation.settlement_amount: {missing: true}",
    "negotiation.settlement_amount: {gte: amounts.deficiency}",
    "collateral.acres: {lt: 2.5}",
    "jurisdiction: {in: limits}",
    "as_of: {gt: \"disposition.date + limits[jurisdiction]\"}",
    "loan.type: mortgage",
    "loan.purchase_money: true",
]


def condition(depth: int = 0) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(LEAVES).map(lambda s: "{" + s + "}")
    if depth >= 3:
        return leaf
    sub = st.deferred(lambda: condition(depth + 1))
    return st.one_of(
        leaf,
        st.lists(sub, min_size=1, max_size=3).map(lambda xs: "{all: [" + ", ".join(xs) + "]}"),
        st.lists(sub, min_size=1, max_size=3).map(lambda xs: "{any: [" + ", ".join(xs) + "]}"),
        sub.map(lambda x: "{not: " + x + "}"),
    )


@st.composite
def generated_case(draw: st.DrawFn):
    conds = draw(st.lists(condition(), min_size=1, max_size=4))
    sample = []
    for _ in range(8):
        collateral: dict = {"kind": "dwelling"}
        negotiation: dict = {}
        for path, strat in PATHS.items():
            if draw(st.booleans()):
                section, name = path.split(".")
                (collateral if section == "collateral" else negotiation)[name] = draw(strat)
        sale = datetime.date(2026, 1, 1)
        sample.append({
            "as_of": (sale + datetime.timedelta(days=draw(st.sampled_from([89, 90, 91, 200])))
                      ).isoformat(),
            "jurisdiction": draw(st.sampled_from(["CA", "NV", "OH"])),
            "loan": {"id": "G", "type": draw(st.sampled_from(["mortgage", "auto"])),
                     "unpaid_balance": "300.00", "purchase_money": draw(st.booleans())},
            "collateral": collateral,
            "disposition": {"method": "auction", "date": sale.isoformat(),
                            "proceeds": draw(st.sampled_from(["100.00", "250.00"]))},
            "negotiation": negotiation,
        })
    return conds, sample


def generated_ruleset(d: Path, conds: list[str]) -> Ruleset:
    """A one-stage ruleset in `d` with one rule per generated condition (rule `r<i>`,
    priority i)."""
    rules = "\n".join(textwrap.dedent(f"""\
      - id: r{i}
        description: generated
        basis: generated
        stage: s
        priority: {i}
        when: {c}
        then: {{outcome.bearer: borrower, outcome.action: close}}""") for i, c in
        enumerate(conds))
    (d / "rules.yaml").write_text(
        "ruleset: gen\nversion: '1'\nstages: [s]\n"
        "constants: {limits: {CA: 90, NV: 180}}\nrules:\n" + rules)
    return load_ruleset(d)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=generated_case())
def test_compiled_conditions_agree_with_reference(tmp_path_factory, case):
    conds, sample = case
    rs = generated_ruleset(tmp_path_factory.mktemp("gen"), conds)
    try:
        engine = Decider(rs, "durable")
    except EngineLimit as exc:
        # A condition the engine cannot hold is refused at load with the rule's
        # position - never a wrong answer. Count it and move on.
        assert "rules.yaml:" in str(exc)
        reject()
    reference = Decider(rs, "reference")
    try:
        for raw in sample:
            f = facts_mod.validate_facts(raw)
            assert engine.decide_facts(f)["trace"] == reference.decide_facts(f)["trace"], conds
    finally:
        engine.close()
