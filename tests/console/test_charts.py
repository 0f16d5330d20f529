"""The waterfall: each step's amount exact, its bar where the running total says, the
split of the deficiency stacking up to it, or the surplus below the axis."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from service.console.charts import PLOT_HEIGHT, TOP, waterfall


def decision(**amounts: str) -> dict[str, Any]:
    base = {"debt": "0.00", "costs": "0.00", "credits": "0.00", "claim": "0.00",
            "proceeds": "0.00", "deficiency": "0.00", "surplus": "0.00"}
    owes = amounts.pop("owes", "0.00")
    absorbs = amounts.pop("absorbs", "0.00")
    return {"amounts": {**base, **amounts},
            "outcome": {"borrower_owes": owes, "lender_absorbs": absorbs}}


def test_a_deficiency_split_between_borrower_and_lender() -> None:
    chart = waterfall(decision(debt="10325.00", costs="620.00", credits="40.00",
                               claim="10905.00", proceeds="8500.00", deficiency="2405.00",
                               owes="1000.00", absorbs="1405.00"))
    bars = {b.key: b for b in chart.bars}
    assert [b.key for b in chart.bars] == ["debt", "costs", "credits", "claim", "proceeds",
                                          "deficiency", "borrower_owes", "lender_absorbs"]
    assert not chart.surplus
    assert {k: b.amount for k, b in bars.items()} == {
        "debt": Decimal("10325.00"), "costs": Decimal("620.00"), "credits": Decimal("40.00"),
        "claim": Decimal("10905.00"), "proceeds": Decimal("8500.00"),
        "deficiency": Decimal("2405.00"), "borrower_owes": Decimal("1000.00"),
        "lender_absorbs": Decimal("1405.00")}
    # The highest point (debt + costs) touches the top; totals stand on the axis.
    assert bars["costs"].y == TOP and chart.axis_y == TOP + PLOT_HEIGHT
    for key in ("debt", "claim", "deficiency", "borrower_owes"):
        assert bars[key].y + bars[key].height == chart.axis_y, key
    # Each step starts where the one before ended.
    assert bars["costs"].y + bars["costs"].height == bars["debt"].y
    assert bars["proceeds"].y == bars["claim"].y
    assert bars["lender_absorbs"].y + bars["lender_absorbs"].height == bars["borrower_owes"].y
    assert bars["lender_absorbs"].y == bars["deficiency"].y
    assert bars["costs"].text == "$620.00" and bars["costs"].sign == "+"
    assert bars["credits"].sign == "−" and bars["proceeds"].sign == "−"


def test_a_surplus_goes_below_the_axis() -> None:
    chart = waterfall(decision(debt="5000.00", claim="5000.00", proceeds="6200.00",
                               surplus="1200.00"))
    assert chart.surplus
    assert [b.key for b in chart.bars][-1] == "surplus"
    surplus = chart.bars[-1]
    assert surplus.amount == Decimal("1200.00") and surplus.y == chart.axis_y
    assert surplus.y + surplus.height == TOP + PLOT_HEIGHT
    proceeds = next(b for b in chart.bars if b.key == "proceeds")
    assert proceeds.y + proceeds.height == TOP + PLOT_HEIGHT  # down past the axis


def test_zero_amounts_still_draw_a_visible_step() -> None:
    chart = waterfall(decision(debt="100.00", claim="100.00", proceeds="100.00"))
    assert all(b.height >= 1 for b in chart.bars)
    assert next(b for b in chart.bars if b.key == "deficiency").amount == Decimal("0.00")
