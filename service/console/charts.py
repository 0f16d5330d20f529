"""Charts drawn on the server as SVG geometry: pure functions over a decision's amounts.

`waterfall(decision)` lays out how the debt becomes the deficiency (debt, costs,
credits, claim, proceeds, deficiency) and how the deficiency is split (borrower owes,
lender absorbs), or the surplus returned to the borrower. Amounts stay exact
decimals; only the pixel positions are rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..amounts import dollars

BAR_WIDTH, GAP, PLOT_HEIGHT, TOP, BOTTOM, LEFT = 78, 18, 220, 28, 46, 12


@dataclass(frozen=True)
class Bar:
    """One step: `start` → `end` in money (a total starts at zero)."""

    key: str
    label: str
    amount: Decimal
    start: Decimal
    end: Decimal
    kind: str  # "total", "up", "down", "owes", "absorbs", "surplus"
    x: int = 0
    y: int = 0
    height: int = 0

    @property
    def text(self) -> str:
        return dollars(self.amount)

    @property
    def sign(self) -> str:
        return {"up": "+", "down": "−"}.get(self.kind, "")


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    width: int
    height: int
    axis_y: int
    #: The sale paid the claim with money left over (the last bar is the surplus).
    surplus: bool
    bar_width: int = BAR_WIDTH


def _steps(amounts: dict[str, Any], outcome: dict[str, Any]) -> list[Bar]:
    d = {k: Decimal(str(amounts[k])) for k in ("debt", "costs", "credits", "claim",
                                               "proceeds", "deficiency", "surplus")}
    owes = Decimal(str(outcome.get("borrower_owes") or "0"))
    absorbs = Decimal(str(outcome.get("lender_absorbs") or "0"))
    zero = Decimal("0.00")
    gross = d["debt"] + d["costs"]
    bars = [
        Bar("debt", "debt", d["debt"], zero, d["debt"], "total"),
        Bar("costs", "costs", d["costs"], d["debt"], gross, "up"),
        Bar("credits", "credits", d["credits"], gross, gross - d["credits"], "down"),
        Bar("claim", "claim", d["claim"], zero, d["claim"], "total"),
        Bar("proceeds", "proceeds", d["proceeds"], d["claim"], d["claim"] - d["proceeds"],
            "down"),
    ]
    if d["surplus"] > 0:
        bars.append(Bar("surplus", "surplus to borrower", d["surplus"], zero, -d["surplus"],
                        "surplus"))
    else:
        bars += [
            Bar("deficiency", "deficiency", d["deficiency"], zero, d["deficiency"], "total"),
            Bar("borrower_owes", "borrower owes", owes, zero, owes, "owes"),
            Bar("lender_absorbs", "lender absorbs", absorbs, owes, owes + absorbs, "absorbs"),
        ]
    return bars


def waterfall(decision: dict[str, Any]) -> Chart:
    bars = _steps(decision["amounts"], decision["outcome"])
    high = max([Decimal(0), *(max(b.start, b.end) for b in bars)])
    low = min([Decimal(0), *(min(b.start, b.end) for b in bars)])
    span = (high - low) or Decimal(1)

    def y(value: Decimal) -> int:
        return TOP + int(((high - value) * PLOT_HEIGHT / span).quantize(Decimal(1),
                                                                         ROUND_HALF_UP))

    placed = []
    for i, bar in enumerate(bars):
        top, bottom = y(max(bar.start, bar.end)), y(min(bar.start, bar.end))
        placed.append(Bar(bar.key, bar.label, bar.amount, bar.start, bar.end, bar.kind,
                          x=LEFT + i * (BAR_WIDTH + GAP), y=top,
                          height=max(bottom - top, 1)))
    width = LEFT * 2 + len(bars) * (BAR_WIDTH + GAP) - GAP
    return Chart(tuple(placed), width, TOP + PLOT_HEIGHT + BOTTOM, y(Decimal(0)),
                 surplus=bars[-1].kind == "surplus")
