"""SPEC §3 amounts: service/amounts.py."""

from __future__ import annotations

import datetime
import decimal
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.amounts import AMOUNT_KEYS, COST_KEYS, compute_amounts, money_str
from service.facts import validate_facts
from service.strictjson import parse_json

TODAY = datetime.date(2024, 6, 1)
D = Decimal


def facts(
    balance: str = "0",
    proceeds: str = "0",
    *,
    interest: str = "0",
    fees: str = "0",
    credits: str = "0",
    **costs: str,
) -> dict[str, Any]:
    doc = {
        "jurisdiction": "OH",
        "loan": {
            "id": "L-1",
            "type": "auto",
            "unpaid_balance": balance,
            "accrued_interest": interest,
            "fees": fees,
        },
        "collateral": {"kind": "vehicle"},
        "disposition": {
            "method": "auction",
            "date": "2024-03-01",
            "proceeds": proceeds,
            "costs": costs,
            "credits": credits,
        },
    }
    return validate_facts(doc, today=TODAY)


def strs(amounts: dict[str, Decimal]) -> dict[str, str]:
    return {k: str(v) for k, v in amounts.items()}


def test_public_example_car() -> None:
    body = b"""{"jurisdiction": "OH",
        "loan": {"id": "CAR-1", "type": "auto", "unpaid_balance": "10000.00"},
        "collateral": {"kind": "vehicle"},
        "disposition": {"method": "auction", "date": "2024-03-01", "proceeds": "8500.00",
                        "costs": {"legal": "500.00"}}}"""
    amounts = compute_amounts(validate_facts(parse_json(body), today=TODAY))
    assert strs(amounts) == {
        "debt": "10000.00",
        "costs": "500.00",
        "credits": "0.00",
        "claim": "10500.00",
        "proceeds": "8500.00",
        "deficiency": "2000.00",
        "surplus": "0.00",
    }
    assert money_str(amounts["deficiency"]) == "2000.00"


def test_public_example_short_sale() -> None:
    body = b"""{"jurisdiction": "TX",
        "loan": {"id": "MTG-1", "type": "mortgage", "unpaid_balance": 250000.00},
        "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": true},
        "disposition": {"method": "short_sale", "date": "2024-03-01", "proceeds": 200000},
        "negotiation": {"state": "short_sale_approved", "deficiency_waived": true}}"""
    amounts = compute_amounts(validate_facts(parse_json(body), today=TODAY))
    assert strs(amounts) == {
        "debt": "250000.00",
        "costs": "0.00",
        "credits": "0.00",
        "claim": "250000.00",
        "proceeds": "200000.00",
        "deficiency": "50000.00",
        "surplus": "0.00",
    }


def test_key_order() -> None:
    assert list(compute_amounts(facts("1", "1"))) == list(AMOUNT_KEYS)
    assert AMOUNT_KEYS == (
        "debt",
        "costs",
        "credits",
        "claim",
        "proceeds",
        "deficiency",
        "surplus",
    )


def test_every_component_counts() -> None:
    a = compute_amounts(
        facts(
            "1000.00",
            "100.00",
            interest="10.10",
            fees="1.01",
            credits="5.55",
            repossession="1",
            storage="2",
            preparation="3",
            sale="4",
            legal="5",
            admin="6.06",
        )
    )
    assert a["debt"] == D("1011.11")
    assert a["costs"] == D("21.06")
    assert a["credits"] == D("5.55")
    assert a["claim"] == D("1026.62")
    assert a["deficiency"] == D("926.62")
    assert a["surplus"] == D("0.00")


def test_surplus() -> None:
    a = compute_amounts(facts("1000.00", "1500.00", sale="100.00"))
    assert strs(a)["claim"] == "1100.00"
    assert strs(a)["deficiency"] == "0.00"
    assert strs(a)["surplus"] == "400.00"


def test_exact_break_even() -> None:
    a = compute_amounts(facts("0.10", "0.30", fees="0.20"))
    assert strs(a)["deficiency"] == "0.00" and strs(a)["surplus"] == "0.00"


def test_negative_claim() -> None:
    # rebates exceeding debt + costs: the claim is negative, all proceeds plus the
    # excess credit go back to the borrower
    a = compute_amounts(facts("100.00", "50.00", credits="300.00", legal="10.00"))
    assert strs(a) == {
        "debt": "100.00",
        "costs": "10.00",
        "credits": "300.00",
        "claim": "-190.00",
        "proceeds": "50.00",
        "deficiency": "0.00",
        "surplus": "240.00",
    }


def test_all_zero_has_no_negative_zero() -> None:
    a = compute_amounts(facts())
    assert all(str(v) == "0.00" for v in a.values())
    assert not any(v.is_signed() for v in a.values())


def test_maximum_values_stay_exact() -> None:
    m = "999999999999.99"
    a = compute_amounts(
        facts(m, m, interest=m, fees=m, **{k: m for k in COST_KEYS})  # type: ignore[arg-type]
    )
    assert a["debt"] == D(m) * 3
    assert a["costs"] == D(m) * 6
    assert str(a["deficiency"]) == str(D(m) * 8)


def test_independent_of_thread_context() -> None:
    with decimal.localcontext() as ctx:
        ctx.prec = 4
        ctx.rounding = decimal.ROUND_DOWN
        a = compute_amounts(facts("123456789.99", "0.01", fees="0.01"))
    assert str(a["deficiency"]) == "123456789.99"


def test_tolerates_absent_defaulted_fields() -> None:
    minimal = {
        "loan": {"unpaid_balance": D("100.00")},
        "disposition": {"proceeds": D("40.00")},
    }
    assert strs(compute_amounts(minimal))["deficiency"] == "60.00"
    minimal["disposition"]["costs"] = {"legal": D("1.00")}  # type: ignore[index]
    assert strs(compute_amounts(minimal))["claim"] == "101.00"


def test_rejects_floats_and_strings() -> None:
    f = facts("1", "1")
    f["loan"]["fees"] = 0.1
    with pytest.raises(TypeError, match="loan.fees"):
        compute_amounts(f)
    f["loan"]["fees"] = "0.10"
    with pytest.raises(TypeError, match="loan.fees"):
        compute_amounts(f)
    f["loan"]["fees"] = D("NaN")
    with pytest.raises(ValueError, match="loan.fees"):
        compute_amounts(f)


def test_input_not_modified() -> None:
    f = facts("10", "5", legal="1")
    before = repr(f)
    compute_amounts(f)
    assert repr(f) == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (D("2000"), "2000.00"),
        (D("2000.00"), "2000.00"),
        (D("0.1"), "0.10"),
        (D("1E+2"), "100.00"),
        (D("1.005"), "1.01"),  # half-up
        (D("1.004"), "1.00"),
        (D("2.675"), "2.68"),
        (D("-0.00"), "0.00"),
        (D("-0.001"), "0.00"),
        (D("-5"), "-5.00"),
        (D("999999999999.99"), "999999999999.99"),
        (D("1E+20"), "100000000000000000000.00"),
        (D("0E-10"), "0.00"),
        (7, "7.00"),
        (0, "0.00"),
    ],
)
def test_money_str(value: Decimal, expected: str) -> None:
    assert money_str(value) == expected


@pytest.mark.parametrize("value", [1.5, "1.00", None, True])
def test_money_str_rejects_non_decimal(value: Any) -> None:
    with pytest.raises(TypeError):
        money_str(value)


@pytest.mark.parametrize("value", [D("NaN"), D("Infinity"), D("-Infinity"), D("sNaN")])
def test_money_str_rejects_non_finite(value: Decimal) -> None:
    with pytest.raises(ValueError):
        money_str(value)


cents = st.integers(0, 99_999_999_999_999)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(cents, min_size=11, max_size=11),
)
def test_amounts_match_integer_cents(values: list[int]) -> None:
    balance, interest, fees, proceeds, credits, *cost_cents = values

    def m(c: int) -> str:
        return f"{c // 100}.{c % 100:02d}"

    f = facts(
        m(balance),
        m(proceeds),
        interest=m(interest),
        fees=m(fees),
        credits=m(credits),
        **{k: m(c) for k, c in zip(COST_KEYS, cost_cents, strict=True)},
    )
    a = compute_amounts(f)
    debt = balance + interest + fees
    costs = sum(cost_cents)
    claim = debt + costs - credits
    assert a["debt"] == D(debt) / 100
    assert a["costs"] == D(costs) / 100
    assert a["credits"] == D(credits) / 100
    assert a["claim"] == D(claim) / 100
    assert a["proceeds"] == D(proceeds) / 100
    assert a["deficiency"] == D(max(claim - proceeds, 0)) / 100
    assert a["surplus"] == D(max(proceeds - claim, 0)) / 100
    # invariants
    assert a["deficiency"] - a["surplus"] == a["claim"] - a["proceeds"]
    assert min(a["deficiency"], a["surplus"]) == 0
    for v in a.values():
        assert v.as_tuple().exponent == -2
        assert money_str(v) == str(v)
